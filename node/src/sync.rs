//! Lock helpers shared by every layer.
//!
//! Every lock in the node is a std lock held for a bounded, non-async stretch and never
//! across an `.await`. Every critical section leaves its data consistent before anything
//! in it can panic, so a poisoned lock still guards valid state: these helpers recover
//! from poisoning instead of spreading one panic to every other task.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex, recovering from poisoning (see the module header).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks, recovering from poisoning.
pub fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks, recovering from poisoning.
pub fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// A value replaced as a whole while readers hold the old one (secrets, certificates
/// reloaded on SIGHUP): readers clone an `Arc` under a read lock held for no longer.
#[derive(Debug)]
pub struct Reloadable<T>(RwLock<std::sync::Arc<T>>);

impl<T> Reloadable<T> {
    pub fn new(value: T) -> Self {
        Reloadable(RwLock::new(std::sync::Arc::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> std::sync::Arc<T> {
        read(&self.0).clone()
    }

    /// Replaces the value; readers that hold the old one keep it.
    pub fn set(&self, value: T) {
        *write(&self.0) = std::sync::Arc::new(value);
    }
}
