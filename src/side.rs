//! The two sides of a mirror pool.

use std::fmt;

/// One of the two databases a [`MirrorPool`](crate::MirrorPool) serves from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The database the pool serves from by default.
    Primary,
    /// The replica kept up to date by the database's own replication.
    Mirror,
}

impl Side {
    /// Both sides, primary first.
    pub const BOTH: [Side; 2] = [Side::Primary, Side::Mirror];

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Mirror,
            Side::Mirror => Side::Primary,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::Primary => 0,
            Side::Mirror => 1,
        }
    }

    /// Lower-case name, as used in messages and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Primary => "primary",
            Side::Mirror => "mirror",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pair of values, one per side.
#[derive(Clone, Debug, Default)]
pub(crate) struct PerSide<T>(pub [T; 2]);

impl<T> PerSide<T> {
    pub(crate) fn new(primary: T, mirror: T) -> Self {
        PerSide([primary, mirror])
    }
}

impl<T> std::ops::Index<Side> for PerSide<T> {
    type Output = T;
    fn index(&self, side: Side) -> &T {
        &self.0[side.index()]
    }
}

impl<T> std::ops::IndexMut<Side> for PerSide<T> {
    fn index_mut(&mut self, side: Side) -> &mut T {
        &mut self.0[side.index()]
    }
}
