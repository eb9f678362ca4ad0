//! GTID positions: MariaDB's `domain-server-seq` lists and MySQL's `uuid[:tag]:interval` sets.
//! Parsing never panics; anything malformed reads as unknown (`None`).

use std::collections::BTreeMap;
use std::fmt;

/// A MariaDB GTID position (`@@gtid_slave_pos`, `Gtid_IO_Pos`, ...): per replication domain,
/// the last GTID as `(server_id, seq_no)`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct DomainPos(BTreeMap<u32, (u32, u64)>);

impl DomainPos {
    /// Parses `0-1-100,5-2-7` (whitespace and an empty string allowed). A domain listed twice
    /// keeps its higher sequence number.
    pub(crate) fn parse(text: &str) -> Option<DomainPos> {
        let mut pos = DomainPos::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split('-');
            let domain = parts.next()?.trim().parse::<u32>().ok()?;
            let server = parts.next()?.trim().parse::<u32>().ok()?;
            let seq = parts.next()?.trim().parse::<u64>().ok()?;
            if parts.next().is_some() {
                return None;
            }
            pos.insert(domain, server, seq);
        }
        Some(pos)
    }

    fn insert(&mut self, domain: u32, server: u32, seq: u64) {
        let slot = self.0.entry(domain).or_insert((server, seq));
        if seq > slot.1 {
            *slot = (server, seq);
        }
    }

    /// Keeps, per domain, the later of the two positions.
    pub(crate) fn merge(&mut self, other: &DomainPos) {
        for (&domain, &(server, seq)) in &other.0 {
            self.insert(domain, server, seq);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sum of the sequence numbers: within a domain they count that domain's
    /// transactions, so the sum only grows and differences between two servers of one
    /// replication topology count transactions.
    pub(crate) fn sum(&self) -> u64 {
        self.0
            .values()
            .fold(0u64, |acc, &(_, seq)| acc.saturating_add(seq))
    }

    /// Transactions in `self` not yet in `applied`, summed over domains.
    pub(crate) fn ahead_of(&self, applied: &DomainPos) -> u64 {
        self.0.iter().fold(0u64, |acc, (domain, &(_, seq))| {
            let done = applied.0.get(domain).map_or(0, |&(_, s)| s);
            acc.saturating_add(seq.saturating_sub(done))
        })
    }
}

impl fmt::Display for DomainPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (domain, (server, seq))) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{domain}-{server}-{seq}")?;
        }
        Ok(())
    }
}

/// A MySQL GTID set (`@@gtid_executed`, `Retrieved_Gtid_Set`): per source UUID (and tag, MySQL
/// 8.3+), disjoint inclusive intervals of transaction numbers in ascending order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct GtidSet(BTreeMap<String, Vec<(u64, u64)>>);

impl GtidSet {
    /// Parses `uuid:1-5:7,uuid2:1-3` (newlines and spaces allowed, as `SHOW REPLICA STATUS`
    /// prints them), with optional tags: `uuid:tag:1-3`.
    pub(crate) fn parse(text: &str) -> Option<GtidSet> {
        let mut set = GtidSet::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let mut parts = item.split(':').map(str::trim);
            let uuid = parts.next()?.to_ascii_lowercase();
            if uuid.len() != 36 || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return None;
            }
            let mut key = uuid.clone();
            for part in parts {
                if part.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = match part.split_once('-') {
                        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
                        None => {
                            let n = part.parse().ok()?;
                            (n, n)
                        }
                    };
                    if a == 0 || b < a {
                        return None;
                    }
                    set.add(&key, a, b);
                } else if !part.is_empty()
                    && part.len() <= 32
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                {
                    key = format!("{uuid}:{}", part.to_ascii_lowercase());
                } else {
                    return None;
                }
            }
        }
        Some(set)
    }

    fn add(&mut self, key: &str, a: u64, b: u64) {
        let list = self.0.entry(key.to_owned()).or_default();
        list.push((a, b));
        list.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(list.len());
        for &(x, y) in list.iter() {
            match merged.last_mut() {
                Some(last) if x <= last.1.saturating_add(1) => last.1 = last.1.max(y),
                _ => merged.push((x, y)),
            }
        }
        *list = merged;
    }

    /// Adds every transaction of `other`.
    pub(crate) fn union(&mut self, other: &GtidSet) {
        for (key, list) in &other.0 {
            for &(a, b) in list {
                self.add(key, a, b);
            }
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.values().all(Vec::is_empty)
    }

    /// How many transactions the set holds.
    pub(crate) fn count(&self) -> u64 {
        self.0
            .values()
            .flatten()
            .fold(0u64, |acc, &(a, b)| acc.saturating_add(b - a + 1))
    }

    /// How many transactions of `self` are not in `other`.
    pub(crate) fn missing_from(&self, other: &GtidSet) -> u64 {
        let mut total = 0u64;
        for (key, list) in &self.0 {
            let theirs = other.0.get(key).map(Vec::as_slice).unwrap_or(&[]);
            for &(a, b) in list {
                // `theirs` is disjoint, so the overlaps add up.
                let covered = theirs.iter().fold(0u64, |acc, &(x, y)| {
                    let (lo, hi) = (a.max(x), b.min(y));
                    if lo <= hi {
                        acc.saturating_add(hi - lo + 1)
                    } else {
                        acc
                    }
                });
                total = total.saturating_add((b - a + 1).saturating_sub(covered));
            }
        }
        total
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (key, list) in self.0.iter().filter(|(_, l)| !l.is_empty()) {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            f.write_str(key)?;
            for &(a, b) in list {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_positions() {
        // Recorded: `Gtid_IO_Pos` and `@@gtid_slave_pos` of a MariaDB 10.11 replica with
        // two domains (the IO position lists domains in the order they were received).
        let io = DomainPos::parse("5-1-2,0-1-19").unwrap();
        let applied = DomainPos::parse("0-1-19,5-1-2").unwrap();
        assert_eq!(io, applied);
        assert_eq!(io.sum(), 21);
        assert_eq!(io.ahead_of(&applied), 0);
        assert_eq!(io.to_string(), "0-1-19,5-1-2");

        let received = DomainPos::parse("0-1-25, 5-1-4,7-3-1").unwrap();
        assert_eq!(received.ahead_of(&applied), 6 + 2 + 1);
        // Applied ahead of received (a domain applied from elsewhere) never counts negative.
        assert_eq!(applied.ahead_of(&DomainPos::parse("0-1-10").unwrap()), 11);
        assert_eq!(DomainPos::parse("0-2-3").unwrap().ahead_of(&received), 0);

        assert_eq!(DomainPos::parse("").unwrap(), DomainPos::default());
        assert!(DomainPos::parse("  ").unwrap().is_empty());
        assert_eq!(DomainPos::parse("0-1"), None);
        assert_eq!(DomainPos::parse("0-1-2-3"), None);
        assert_eq!(DomainPos::parse("x-1-2"), None);
        assert_eq!(DomainPos::parse("0-1-99999999999999999999"), None);

        let mut merged = DomainPos::parse("0-1-10,1-1-5").unwrap();
        merged.merge(&DomainPos::parse("0-2-12,1-1-3,2-1-1").unwrap());
        assert_eq!(merged.to_string(), "0-2-12,1-1-5,2-1-1");
        let huge = DomainPos::parse(&format!("0-1-{},1-1-{}", u64::MAX, u64::MAX)).unwrap();
        assert_eq!(huge.sum(), u64::MAX);
    }

    #[test]
    fn mysql_sets() {
        let a = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
        let b = "73f86016-978b-11ee-ade5-8d2a2a562feb";
        // As SHOW REPLICA STATUS prints them: upper or lower case, newline after commas.
        let executed =
            GtidSet::parse(&format!("{a}:1-5:11-18,\n{}:1-27", b.to_uppercase())).unwrap();
        assert_eq!(executed.count(), 5 + 8 + 27);
        let retrieved = GtidSet::parse(&format!("{b}:1-30")).unwrap();
        assert_eq!(retrieved.missing_from(&executed), 3);
        assert_eq!(executed.missing_from(&retrieved), 13);
        assert_eq!(retrieved.missing_from(&retrieved), 0);

        let tagged = GtidSet::parse(&format!("{a}:1-3:blue:1-2:4")).unwrap();
        assert_eq!(tagged.count(), 6);
        assert_eq!(tagged.to_string(), format!("{a}:1-3,{a}:blue:1-2:4"));

        let mut u = GtidSet::parse(&format!("{a}:1-3:7")).unwrap();
        u.union(&GtidSet::parse(&format!("{a}:4-6,{b}:2")).unwrap());
        assert_eq!(u.to_string(), format!("{a}:1-7,{b}:2"));

        assert!(GtidSet::parse("").unwrap().is_empty());
        assert_eq!(GtidSet::parse("not-a-uuid:1-2"), None);
        assert_eq!(GtidSet::parse(&format!("{a}:5-2")), None);
        assert_eq!(GtidSet::parse(&format!("{a}:0")), None);
        assert_eq!(GtidSet::parse(&format!("{a}:1-x")), None);
        assert_eq!(GtidSet::parse(&format!("{a}:bad tag:1")), None);
        let max = GtidSet::parse(&format!("{a}:1-{}", u64::MAX)).unwrap();
        assert_eq!(max.count(), u64::MAX);
    }
}
