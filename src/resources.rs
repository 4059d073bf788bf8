//! Resource slots: `cpu`, `gpu`, `blender`, `net`. A task holds the slots its stage declares
//! while it runs; the executor has a fixed number of each.

use serde::{Deserialize, Serialize};
use std::fmt;

pub const SLOT_NAMES: [&str; 4] = ["cpu", "gpu", "blender", "net"];

/// Counts per slot kind (what a task needs, or what an executor has).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub cpu: u32,
    #[serde(default)]
    pub gpu: u32,
    #[serde(default)]
    pub blender: u32,
    #[serde(default)]
    pub net: u32,
}

impl Resources {
    pub const ONE_CPU: Resources = Resources {
        cpu: 1,
        gpu: 0,
        blender: 0,
        net: 0,
    };

    pub fn as_array(&self) -> [u32; 4] {
        [self.cpu, self.gpu, self.blender, self.net]
    }

    pub fn from_array(a: [u32; 4]) -> Resources {
        Resources {
            cpu: a[0],
            gpu: a[1],
            blender: a[2],
            net: a[3],
        }
    }

    pub fn is_zero(&self) -> bool {
        self.as_array().iter().all(|n| *n == 0)
    }

    /// Whether `need` fits in what is free now.
    pub fn fits(&self, need: &Resources) -> bool {
        self.as_array()
            .iter()
            .zip(need.as_array())
            .all(|(have, need)| *have >= need)
    }

    pub fn take(&mut self, need: &Resources) {
        let mut a = self.as_array();
        for (have, need) in a.iter_mut().zip(need.as_array()) {
            *have -= need;
        }
        *self = Resources::from_array(a);
    }

    pub fn give(&mut self, need: &Resources) {
        let mut a = self.as_array();
        for (have, need) in a.iter_mut().zip(need.as_array()) {
            *have += need;
        }
        *self = Resources::from_array(a);
    }

    /// The first slot kind where `need` exceeds `self` (the capacity): (name, need, have).
    pub fn shortfall(&self, need: &Resources) -> Option<(&'static str, u32, u32)> {
        SLOT_NAMES
            .iter()
            .zip(self.as_array().into_iter().zip(need.as_array()))
            .find(|(_, (have, need))| need > have)
            .map(|(name, (have, need))| (*name, need, have))
    }

    /// This machine's defaults: one cpu slot per core, one gpu slot per visible GPU, one
    /// Blender process (Cycles already uses every core), eight concurrent downloads.
    pub fn machine_defaults() -> Resources {
        Resources {
            cpu: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
            gpu: visible_gpus(),
            blender: 1,
            net: 8,
        }
    }
}

/// The most of one slot a flag or table may give: more is a typo, not a machine.
pub const MAX_SLOT_COUNT: u32 = 65_536;

/// Slot counts given on the command line (`--slots cpu=4,gpu=1`), checked when the flag is
/// parsed and applied over what the pipeline's `[executor]` table or the machine gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlotOverrides([Option<u32>; 4]);

impl SlotOverrides {
    /// Parses `cpu=4,gpu=1`; the error says what is wrong with which part.
    pub fn parse(text: &str) -> Result<SlotOverrides, String> {
        let mut counts = [None; 4];
        let mut any = false;
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part
                .split_once('=')
                .ok_or_else(|| format!("`{part}` is not NAME=COUNT (e.g. cpu=4,gpu=1)"))?;
            let idx = SLOT_NAMES
                .iter()
                .position(|n| *n == name.trim())
                .ok_or_else(|| {
                    format!(
                        "unknown slot `{}`; slots are {}",
                        name.trim(),
                        SLOT_NAMES.join(", ")
                    )
                })?;
            let count: u32 = value
                .trim()
                .parse()
                .map_err(|_| format!("slot count `{}` is not a whole number", value.trim()))?;
            if count > MAX_SLOT_COUNT {
                return Err(format!(
                    "{count} {} slots is more than any machine has (at most {MAX_SLOT_COUNT})",
                    SLOT_NAMES[idx]
                ));
            }
            counts[idx] = Some(count);
            any = true;
        }
        if !any {
            return Err("no slot given; write NAME=COUNT, e.g. cpu=4,gpu=1".into());
        }
        Ok(SlotOverrides(counts))
    }

    /// `base` with the counts given here in place of its own.
    pub fn apply(&self, base: Resources) -> Resources {
        let mut a = base.as_array();
        for (have, given) in a.iter_mut().zip(self.0) {
            if let Some(n) = given {
                *have = n;
            }
        }
        Resources::from_array(a)
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = SLOT_NAMES
            .iter()
            .zip(self.as_array())
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name}={n}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// GPUs this process may use: CUDA_VISIBLE_DEVICES when set, else the NVIDIA device nodes.
fn visible_gpus() -> u32 {
    if let Ok(visible) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let visible = visible.trim();
        if visible.is_empty() || visible == "-1" || visible.eq_ignore_ascii_case("none") {
            return 0;
        }
        return visible.split(',').filter(|s| !s.trim().is_empty()).count() as u32;
    }
    std::fs::read_dir("/dev")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.strip_prefix("nvidia")
                        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
                })
                .count() as u32
        })
        .unwrap_or(0)
}

/// This machine's host name (a worker's name, the names of a self-signed certificate, the
/// URL Slurm jobs reach the coordinator at).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_parse_and_name_bad_slots() {
        let base = Resources::ONE_CPU;
        let r = SlotOverrides::parse("cpu=4, gpu=1").unwrap().apply(base);
        assert_eq!((r.cpu, r.gpu, r.net), (4, 1, 0));
        let kept = SlotOverrides::parse("gpu=2").unwrap().apply(base);
        assert_eq!((kept.cpu, kept.gpu), (1, 2));
        let err = SlotOverrides::parse("gpus=1").unwrap_err();
        assert!(err.contains("unknown slot `gpus`"), "{err}");
        let err = SlotOverrides::parse("cpu=4000000000").unwrap_err();
        assert!(err.contains("more than any machine has"), "{err}");
        let err = SlotOverrides::parse("cpu=-1").unwrap_err();
        assert!(err.contains("not a whole number"), "{err}");
        assert!(
            SlotOverrides::parse(" , ")
                .unwrap_err()
                .contains("no slot given")
        );
    }

    #[test]
    fn shortfall_names_the_slot() {
        let have = Resources::ONE_CPU;
        let need = Resources {
            gpu: 1,
            ..Resources::default()
        };
        assert_eq!(have.shortfall(&need), Some(("gpu", 1, 0)));
        assert!(have.fits(&Resources::ONE_CPU));
    }
}
