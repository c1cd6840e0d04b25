//! A compact string interner: external ids (user ids, ASINs) to dense `u32` indices.
//!
//! Ids live once in one arena instead of one heap string per id (and a second copy as the
//! map key), which keeps ingest of millions of users well inside the memory budget.

use hashbrown::HashTable;
use std::hash::BuildHasher;

#[derive(Default)]
pub struct Interner {
    arena: String,
    /// `ends[i]` is the end offset of id `i` in `arena`; it starts where id `i - 1` ends.
    ends: Vec<usize>,
    table: HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
}

impl Interner {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The id of index `i`.
    pub fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }

    /// The index of `id`, if it was interned.
    pub fn lookup(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table.find(hash, |&i| self.get(i) == id).copied()
    }

    /// The index of `id`, interning it first if it is new.
    pub fn intern(&mut self, id: &str) -> u32 {
        let hash = self.hasher.hash_one(id);
        if let Some(&i) = self
            .table
            .find(hash, |&i| get(&self.arena, &self.ends, i) == id)
        {
            return i;
        }
        let index = u32::try_from(self.ends.len()).expect("more than u32::MAX distinct ids");
        self.arena.push_str(id);
        self.ends.push(self.arena.len());
        let (arena, ends, hasher) = (&self.arena, &self.ends, &self.hasher);
        self.table
            .insert_unique(hash, index, |&i| hasher.hash_one(get(arena, ends, i)));
        index
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len() as u32).map(|i| self.get(i))
    }
}

fn get<'a>(arena: &'a str, ends: &[usize], i: u32) -> &'a str {
    let i = i as usize;
    let start = if i == 0 { 0 } else { ends[i - 1] };
    &arena[start..ends[i]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interning_is_stable_and_dense() {
        let mut interner = Interner::new();
        assert_eq!(interner.intern("B00A"), 0);
        assert_eq!(interner.intern("A1"), 1);
        assert_eq!(interner.intern("B00A"), 0);
        assert_eq!(interner.intern(""), 2);
        assert_eq!(interner.len(), 3);
        assert_eq!(interner.get(1), "A1");
        assert_eq!(interner.get(2), "");
        assert_eq!(interner.lookup("A1"), Some(1));
        assert_eq!(interner.lookup("zz"), None);
        assert_eq!(interner.iter().collect::<Vec<_>>(), ["B00A", "A1", ""]);
    }

    #[test]
    fn survives_table_growth() {
        let mut interner = Interner::new();
        for i in 0..10_000 {
            assert_eq!(interner.intern(&format!("user-{i}")), i);
        }
        for i in 0..10_000 {
            assert_eq!(interner.lookup(&format!("user-{i}")), Some(i));
        }
    }
}
