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
