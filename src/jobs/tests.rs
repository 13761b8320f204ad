use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{every, BoxFuture, Job, JobMetrics, Next, Scheduled, Supervisor};

/// A job that counts its runs and does what `behaviour` says on each.
struct Probe {
    name: &'static str,
    runs: Arc<AtomicUsize>,
    behaviour: fn(usize) -> Result<Next, String>,
}

#[rocket::async_trait]
impl Job for Probe {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&mut self, _stop: &CancellationToken) -> Result<Next, String> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        (self.behaviour)(n)
    }
}

/// A job whose run never ends by itself.
struct Endless;

#[rocket::async_trait]
impl Job for Endless {
    fn name(&self) -> &'static str {
        "endless"
    }

    async fn run(&mut self, _stop: &CancellationToken) -> Result<Next, String> {
        std::future::pending().await
    }
}

fn supervisor() -> Supervisor {
    Supervisor::new(JobMetrics::register(&crate::metrics::Metrics::new()))
}

fn probe(
    name: &'static str,
    every_ms: u64,
    behaviour: fn(usize) -> Result<Next, String>,
) -> (Scheduled, Arc<AtomicUsize>) {
    let runs = Arc::new(AtomicUsize::new(0));
    (every(Duration::from_millis(every_ms), Probe { name, runs: runs.clone(), behaviour }), runs)
}

/// Wait (at most 20 s) until `counter` reaches `n`: a panic prints its backtrace, slow in a debug
/// build, and the machine may be busy: wait for the runs, not a set time.
async fn until(counter: &AtomicUsize, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while counter.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
        rocket::tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[rocket::async_test]
async fn cancellation_stops_every_job_promptly() {
    let s = supervisor();
    let (idle, runs) = probe("idle", 3_600_000, |_| Ok(Next::Idle));
    s.start(vec![idle, every(Duration::from_secs(3600), Endless)]);
    until(&runs, 1).await;
    rocket::tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "ran once at start, then waits its hour");
    assert_eq!(s.running(), 2);
    let started = std::time::Instant::now();
    s.stop(Duration::from_secs(10)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped at once, not after the grace: {:?}",
        started.elapsed()
    );
    assert_eq!(s.running(), 0);
    assert!(s.token().is_cancelled());
}

#[rocket::async_test]
async fn a_failing_job_is_retried_at_its_interval_and_counted() {
    let s = supervisor();
    let (failing, runs) = probe("failing", 40, |_| Err("the database is away".into()));
    let started = std::time::Instant::now();
    s.start(vec![failing]);
    until(&runs, 4).await;
    let elapsed = started.elapsed();
    s.stop(Duration::from_secs(1)).await;
    // Runs at 0, 40, 80, 120 ms: retried, but at its interval, not in a busy loop.
    assert!(elapsed >= Duration::from_millis(120), "{elapsed:?}");
    let n = runs.load(Ordering::SeqCst);
    assert!(n >= 4, "{n}");
    let m = s.metrics();
    assert_eq!(m.runs("failing"), n as u64);
    assert_eq!(m.failures("failing"), n as u64);
}

#[rocket::async_test]
async fn a_panicking_job_does_not_stop_the_others_and_keeps_its_schedule() {
    let s = supervisor();
    let (panicking, panics) = probe("panicking", 30, |n| if n > 0 { panic!("run {n} panics") } else { Ok(Next::Idle) });
    let (healthy, runs) = probe("healthy", 30, |_| Ok(Next::Idle));
    s.start(vec![panicking, healthy]);
    until(&panics, 3).await;
    until(&runs, 3).await;
    s.stop(Duration::from_secs(1)).await;
    let (p, h) = (panics.load(Ordering::SeqCst), runs.load(Ordering::SeqCst));
    assert!(p >= 3, "the panicking job ran again after each panic: {p}");
    assert!(h >= 3, "the other job went on: {h}");
    let m = s.metrics();
    assert_eq!(m.failures("panicking"), p as u64);
    assert_eq!(m.failures("healthy"), 0);
    assert_eq!(m.runs("healthy"), h as u64);
}

#[rocket::async_test]
async fn a_job_with_more_to_do_runs_again_at_once_and_a_late_one_waits_its_first_interval() {
    let s = supervisor();
    let (busy, busy_runs) = probe("busy", 3_600_000, |n| Ok(if n < 5 { Next::Again } else { Next::Idle }));
    let (late, late_runs) = probe("late", 3_600_000, |_| Ok(Next::Idle));
    s.start(vec![busy, late.first_after_interval()]);
    until(&busy_runs, 5).await;
    rocket::tokio::time::sleep(Duration::from_millis(30)).await;
    s.stop(Duration::from_secs(1)).await;
    assert_eq!(busy_runs.load(Ordering::SeqCst), 5);
    assert_eq!(late_runs.load(Ordering::SeqCst), 0);
}

/// A wake-up runs the job before its interval; `Next::At` runs it at that time.
#[rocket::async_test]
async fn a_wake_up_or_a_time_asked_for_runs_the_job_before_its_interval() {
    struct Woken {
        runs: Arc<AtomicUsize>,
        bell: Arc<rocket::tokio::sync::Notify>,
    }
    #[rocket::async_trait]
    impl Job for Woken {
        fn name(&self) -> &'static str {
            "woken"
        }
        async fn run(&mut self, _stop: &CancellationToken) -> Result<Next, String> {
            let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            // The third run asks for a fourth soon.
            Ok(if n == 3 { Next::At(std::time::Instant::now() + Duration::from_millis(20)) } else { Next::Idle })
        }
        fn woken(&mut self) -> BoxFuture<'_, ()> {
            Box::pin(self.bell.notified())
        }
    }
    let (runs, bell) = (Arc::new(AtomicUsize::new(0)), Arc::new(rocket::tokio::sync::Notify::new()));
    let s = supervisor();
    s.start(vec![every(Duration::from_secs(3600), Woken { runs: runs.clone(), bell: bell.clone() })]);
    until(&runs, 1).await;
    bell.notify_one();
    until(&runs, 2).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "woken once");
    bell.notify_one();
    until(&runs, 4).await;
    s.stop(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 4, "woken, then at the time it asked for; never its hour");
}
