//! The one std-mutex helper every module shares (the bottom layer).

/// Locks a std mutex. Its holders never panic while holding it (short,
/// plain updates, never across an `.await`), so a poisoned lock's value
/// is still good and is used rather than spreading the panic.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
