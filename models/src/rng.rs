//! libtorch has one global random generator per process, shared by every thread. A seeded
//! construction (`manual_seed`, then the draws of an initialisation or of dropout) gives
//! the same numbers only if no other thread draws in between: tests in one binary run on
//! several threads, and one test's draws once moved another's "seeded" projector.
//! [`seeded`] makes seeding and the draws that follow one critical section.

use std::cell::Cell;
use std::sync::{Mutex, MutexGuard};

static GENERATOR: Mutex<()> = Mutex::new(());

thread_local! {
    /// Whether this thread is inside [`seeded`] already (a seeded init that builds a seeded
    /// part): the inner call re-seeds without taking the lock again.
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, which draws numbers nobody needs again (a module built at random and then
/// overwritten by loaded weights), inside the same critical section as [`seeded`], so
/// that its draws cannot land in the middle of another thread's seeded section.
pub fn exclusive<T>(f: impl FnOnce() -> T) -> T {
    if HELD.with(Cell::get) {
        return f();
    }
    let _guard: MutexGuard<'_, ()> = GENERATOR.lock().unwrap_or_else(|p| p.into_inner());
    let _release = Held::enter();
    f()
}

/// Runs `f` with libtorch's global generator seeded with `seed` and reserved for this
/// thread: every other [`seeded`] section in the process waits until `f` returns, so what
/// `f` draws depends on `seed` alone. Re-entrant on the same thread.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    exclusive(|| {
        tch::manual_seed(seed);
        f()
    })
}

/// Marks this thread as inside a section until dropped (also when `f` panics).
struct Held;

impl Held {
    fn enter() -> Self {
        HELD.with(|h| h.set(true));
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        HELD.with(|h| h.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn draw() -> Vec<f32> {
        Vec::<f32>::try_from(Tensor::randn([64], (Kind::Float, Device::Cpu))).unwrap()
    }

    #[test]
    fn a_seeded_section_is_not_disturbed_by_other_threads() {
        let want = seeded(7, || (draw(), draw()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let noise = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seeded(1, draw);
                }
            })
        };
        for _ in 0..200 {
            let got = seeded(7, || {
                let a = draw();
                std::thread::yield_now();
                (a, draw())
            });
            assert_eq!(got, want);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        noise.join().unwrap();
    }

    #[test]
    fn nested_sections_reseed_without_deadlock() {
        let outer = seeded(3, || seeded(4, draw));
        assert_eq!(outer, seeded(4, draw));
    }
}
