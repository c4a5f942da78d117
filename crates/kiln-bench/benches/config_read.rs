//! What one configuration read costs a request, by publication mechanism.
//!
//! Each "read" is what a request handler does once: get at the current
//! configuration and touch one field of it. Measured with 1 and 2 reader
//! threads (each thread does the same number of reads; the figure is the
//! time per read as one thread sees it), with and without a writer thread
//! storing a new configuration 1,000 times a second.
//!
//! Mechanisms: `ArcSwap::load` (a guard, what kiln's own code uses for
//! short reads), `ArcSwap::load_full` (an `Arc` clone, what kiln's request
//! path holds for the life of a request), `arc_swap::Cache` (one per reader
//! thread), `std::sync::RwLock`, `tokio::sync::RwLock` (read `.await`ed on
//! a current-thread runtime per reader) and `std::sync::Mutex`.
//!
//! Run: `cargo bench -p kiln-bench --bench config_read`.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A configuration of realistic shape: a few fields behind one pointer.
struct Config {
    greeting: String,
    limit: usize,
    generation: u64,
}

fn config(generation: u64) -> Arc<Config> {
    Arc::new(Config {
        greeting: format!("Hello from generation {generation}"),
        limit: 20,
        generation,
    })
}

/// The read a request does: a couple of fields of the current config.
#[inline(always)]
fn touch(config: &Config) -> usize {
    config.greeting.len() + config.limit + config.generation as usize
}

/// The shared cell, one per mechanism.
enum Cell {
    Load(Arc<ArcSwap<Config>>),
    LoadFull(Arc<ArcSwap<Config>>),
    Cache(Arc<ArcSwap<Config>>),
    StdRwLock(Arc<RwLock<Arc<Config>>>),
    TokioRwLock(Arc<tokio::sync::RwLock<Arc<Config>>>),
    Mutex(Arc<Mutex<Arc<Config>>>),
}

impl Cell {
    fn new(name: &str) -> Self {
        let swap = || Arc::new(ArcSwap::new(config(0)));
        match name {
            "arcswap_load" => Self::Load(swap()),
            "arcswap_load_full" => Self::LoadFull(swap()),
            "arcswap_cache" => Self::Cache(swap()),
            "std_rwlock" => Self::StdRwLock(Arc::new(RwLock::new(config(0)))),
            "tokio_rwlock" => Self::TokioRwLock(Arc::new(tokio::sync::RwLock::new(config(0)))),
            "std_mutex" => Self::Mutex(Arc::new(Mutex::new(config(0)))),
            other => unreachable!("unknown mechanism {other}"),
        }
    }

    /// Performs `iters` reads on the calling thread and returns the time taken.
    fn read_many(&self, iters: u64) -> Duration {
        match self {
            Self::Load(swap) => timed(iters, || touch(&swap.load())),
            Self::LoadFull(swap) => timed(iters, || touch(&swap.load_full())),
            Self::Cache(swap) => {
                let mut cache = Cache::new(&**swap);
                timed(iters, || touch(cache.load()))
            }
            Self::StdRwLock(lock) => timed(iters, || touch(&lock.read().expect("not poisoned"))),
            Self::Mutex(lock) => timed(iters, || touch(&lock.lock().expect("not poisoned"))),
            Self::TokioRwLock(lock) => {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("a current-thread runtime");
                runtime.block_on(async {
                    let started = Instant::now();
                    for _ in 0..iters {
                        black_box(touch(&*lock.read().await));
                    }
                    started.elapsed()
                })
            }
        }
    }

    /// Publishes a new configuration, as a reload does.
    fn store(&self, generation: u64) {
        let next = config(generation);
        match self {
            Self::Load(swap) | Self::LoadFull(swap) | Self::Cache(swap) => swap.store(next),
            Self::StdRwLock(lock) => *lock.write().expect("not poisoned") = next,
            Self::Mutex(lock) => *lock.lock().expect("not poisoned") = next,
            Self::TokioRwLock(lock) => *lock.blocking_write() = next,
        }
    }
}

#[inline(always)]
fn timed(iters: u64, mut read: impl FnMut() -> usize) -> Duration {
    let started = Instant::now();
    for _ in 0..iters {
        black_box(read());
    }
    started.elapsed()
}

/// Runs `iters` reads on each of `readers` threads started together, while
/// an optional writer stores 1,000 times a second; returns the mean time
/// one thread took, so that criterion reports time per read per thread.
fn run(cell: &Cell, readers: usize, writer: bool, iters: u64) -> Duration {
    let stop = AtomicBool::new(false);
    let start = Barrier::new(readers + 1);
    thread::scope(|scope| {
        let writer = writer.then(|| {
            scope.spawn(|| {
                let mut generation = 0;
                let mut next = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    generation += 1;
                    cell.store(generation);
                    next += Duration::from_millis(1);
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        thread::sleep(wait);
                    }
                }
            })
        });
        let threads: Vec<_> = (0..readers)
            .map(|_| {
                scope.spawn(|| {
                    start.wait();
                    cell.read_many(iters)
                })
            })
            .collect();
        start.wait();
        let total: Duration = threads
            .into_iter()
            .map(|t| t.join().expect("reader thread"))
            .sum();
        stop.store(true, Ordering::Relaxed);
        if let Some(writer) = writer {
            writer.join().expect("writer thread");
        }
        total / readers as u32
    })
}

fn config_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_read");
    for name in kiln_bench::CONFIG_READ_MECHANISMS {
        for readers in [1, 2] {
            for writer in [false, true] {
                let cell = Cell::new(name);
                let parameter = format!(
                    "readers={readers},writer={}",
                    if writer { "1000/s" } else { "none" }
                );
                group.bench_function(BenchmarkId::new(name, parameter), |b| {
                    b.iter_custom(|iters| run(&cell, readers, writer, iters));
                });
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = config_read
}
criterion_main!(benches);
