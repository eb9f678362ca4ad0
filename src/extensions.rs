//! Typed per-connection storage that survives return and checkout (r2d2's `Extensions`).

use std::any::{Any, TypeId};
use std::fmt;

/// Values of any type, at most one per type, kept with a pooled connection for as long as it
/// lives: e.g. a prepared-statement cache. Reached through
/// [`PooledConnection::extensions`](crate::PooledConnection::extensions).
#[derive(Default)]
pub struct Extensions {
    // Few entries per connection: a vector beats a hash map here.
    values: Vec<(TypeId, Box<dyn Any + Send>)>,
}

impl Extensions {
    /// Stores `value`, returning the value of that type stored before, if any.
    pub fn insert<T: Send + 'static>(&mut self, value: T) -> Option<T> {
        let old = self.remove::<T>();
        self.values.push((TypeId::of::<T>(), Box::new(value)));
        old
    }

    /// The value of type `T`, if one is stored.
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.values
            .iter()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_ref())
    }

    /// The value of type `T`, mutably, if one is stored.
    pub fn get_mut<T: 'static>(&mut self) -> Option<&mut T> {
        self.values
            .iter_mut()
            .find(|(id, _)| *id == TypeId::of::<T>())
            .and_then(|(_, v)| v.downcast_mut())
    }

    /// Removes and returns the value of type `T`, if one is stored.
    pub fn remove<T: 'static>(&mut self) -> Option<T> {
        let i = self
            .values
            .iter()
            .position(|(id, _)| *id == TypeId::of::<T>())?;
        let (_, v) = self.values.swap_remove(i);
        v.downcast().ok().map(|b| *b)
    }

    /// How many values are stored.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl fmt::Debug for Extensions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Extensions")
            .field("len", &self.values.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_one_value_per_type() {
        let mut e = Extensions::default();
        assert!(e.is_empty());
        assert_eq!(e.insert(5u32), None);
        assert_eq!(e.insert("cache".to_string()), None);
        assert_eq!(e.insert(7u32), Some(5));
        assert_eq!(e.get::<u32>(), Some(&7));
        *e.get_mut::<String>().unwrap() += "d";
        assert_eq!(e.get::<String>().map(String::as_str), Some("cached"));
        assert_eq!(e.len(), 2);
        assert_eq!(e.remove::<u32>(), Some(7));
        assert_eq!(e.get::<u32>(), None);
        assert_eq!(e.get::<u64>(), None);
    }
}
