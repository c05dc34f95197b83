//! Maps bounded in entries, for what the node remembers about clients it does not trust
//! (addresses that failed to authenticate, refused peers, users cooling down): past the
//! bound, the entries that no longer matter are forgotten first, and if that is not
//! enough, all (an attacker then loses its history; memory never grows).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Makes room for `key` in `map` of at most `max` entries: nothing to do when the key is
/// already there or there is room; else the entries for which `settled` says true are
/// forgotten, and if the map is still full, every entry.
pub fn make_room<K, Q, V>(
    map: &mut HashMap<K, V>,
    key: &Q,
    max: usize,
    mut settled: impl FnMut(&V) -> bool,
) where
    K: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    if map.len() < max || map.contains_key(key) {
        return;
    }
    map.retain(|_, v| !settled(v));
    if map.len() >= max {
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_settled_go_first_then_everything() {
        let mut map: HashMap<u32, bool> = (0..4).map(|k| (k, k % 2 == 0)).collect();
        make_room(&mut map, &9, 4, |settled| *settled);
        assert_eq!(map.len(), 2, "the two settled forgotten");
        map.insert(10, false);
        map.insert(11, false);
        make_room(&mut map, &12, 4, |settled| *settled);
        assert!(map.is_empty(), "none settled: all forgotten");
        // A key already there, or room left: nothing forgotten.
        let mut map: HashMap<u32, bool> = (0..4).map(|k| (k, true)).collect();
        make_room(&mut map, &3, 4, |settled| *settled);
        assert_eq!(map.len(), 4);
        make_room(&mut map, &9, 5, |settled| *settled);
        assert_eq!(map.len(), 4);
    }
}
