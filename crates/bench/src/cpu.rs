//! CPU time per thread name, from `/proc/<pid>/task/*/stat`, to show which of a
//! process's threads (HTTP workers, WAL committer, engine, break store) were busy.
//! Linux only; elsewhere every snapshot is empty.

use std::collections::BTreeMap;

/// Clock ticks per second of `/proc` times (`USER_HZ`; 100 on every mainstream Linux).
const TICKS_PER_SEC: f64 = 100.0;

/// Accumulated user + system ticks, by thread name.
#[derive(Clone, Default)]
pub struct Snapshot(BTreeMap<String, u64>);

impl Snapshot {
    /// The threads of process `pid`, or of this process when `None`.
    pub fn take(pid: Option<u32>) -> Snapshot {
        let dir = match pid {
            Some(p) => format!("/proc/{p}/task"),
            None => "/proc/self/task".to_string(),
        };
        let mut out = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(dir) else {
            return Snapshot(out);
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close].to_string();
            let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
            // Fields 14 and 15 of stat(5), counted from the state (field 3) at index 0.
            let ticks: u64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
                .sum();
            *out.entry(name).or_default() += ticks;
        }
        Snapshot(out)
    }

    /// CPU seconds per thread name spent since `earlier`, busiest first (threads that
    /// exited in between are missing).
    pub fn since(&self, earlier: &Snapshot) -> Vec<(String, f64)> {
        let mut v: Vec<(String, f64)> = self
            .0
            .iter()
            .map(|(name, &t)| {
                let before = earlier.0.get(name).copied().unwrap_or(0);
                (
                    name.clone(),
                    t.saturating_sub(before) as f64 / TICKS_PER_SEC,
                )
            })
            .filter(|(_, s)| *s > 0.0)
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        v
    }
}

/// Machine-wide busy CPU time and this process's own (its reaped children included), to
/// tell how much of the machine other processes took during a measurement.
#[derive(Clone, Copy)]
pub struct Load {
    machine_busy: u64,
    own: u64,
}

/// CPU seconds over a measured window.
#[derive(serde::Serialize, Clone, Copy, Debug)]
pub struct LoadDelta {
    pub wall_seconds: f64,
    pub cores: usize,
    /// Busy CPU time of every process on the machine.
    pub machine_busy_cpu_seconds: f64,
    /// This process and the children it reaped in the window.
    pub own_cpu_seconds: f64,
    /// The difference: what other processes (another build, say) and kernel threads took.
    pub other_cpu_seconds: f64,
}

impl Load {
    pub fn take() -> Load {
        Load::take_with(&[])
    }

    /// Also counts the live (not yet reaped) child processes `pids` as this benchmark's.
    pub fn take_with(pids: &[u32]) -> Load {
        let machine_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_string();
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal
                Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum())
            })
            .unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                // utime stime cutime cstime: fields 14 to 17.
                Some(
                    (11..15)
                        .filter_map(|i| f.get(i)?.parse::<i64>().ok())
                        .sum::<i64>()
                        .max(0) as u64,
                )
            })
            .unwrap_or(0);
        let children: u64 = pids
            .iter()
            .filter_map(|pid| {
                let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(
                    (11..13)
                        .filter_map(|i| f.get(i)?.parse::<u64>().ok())
                        .sum::<u64>(),
                )
            })
            .sum();
        Load {
            machine_busy,
            own: own + children,
        }
    }

    pub fn since(&self, earlier: &Load, wall: std::time::Duration) -> LoadDelta {
        let machine = self.machine_busy.saturating_sub(earlier.machine_busy) as f64 / TICKS_PER_SEC;
        let own = self.own.saturating_sub(earlier.own) as f64 / TICKS_PER_SEC;
        LoadDelta {
            wall_seconds: wall.as_secs_f64(),
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            machine_busy_cpu_seconds: machine,
            own_cpu_seconds: own,
            other_cpu_seconds: (machine - own).max(0.0),
        }
    }
}

impl LoadDelta {
    /// One line for the tables, with a warning when others took more than a tenth.
    pub fn line(&self) -> String {
        let available = self.wall_seconds * self.cores as f64;
        let share = self.other_cpu_seconds / available.max(1e-9);
        format!(
            "other processes and the kernel used {:.1} of {:.1} CPU-seconds ({:.0}%), this benchmark {:.1}{}",
            self.other_cpu_seconds,
            available,
            share * 100.0,
            self.own_cpu_seconds,
            if share > 0.10 {
                "  <- the machine was shared; figures are depressed"
            } else {
                ""
            }
        )
    }
}
