//! Running a stage on a rayon pool of a chosen size.

/// Run `f` on a pool of `threads` workers (`None` or 0, or a pool that cannot be built:
/// rayon's global pool).
pub(crate) fn with_threads<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    match threads
        .filter(|n| *n > 0)
        .and_then(|n| rayon::ThreadPoolBuilder::new().num_threads(n).build().ok())
    {
        Some(pool) => pool.install(f),
        None => f(),
    }
}
