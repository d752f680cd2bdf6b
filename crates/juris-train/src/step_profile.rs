//! An opt-in clock of where a training step's time goes (`JURIS_STEP_PROFILE=1`): the
//! device is synchronized at each boundary (batch sampling, model inputs, forward, loss and
//! backward, clipping and update) so that GPU work is charged to the part that queued it.
//! The synchronizations cost time themselves, so profiled runs are not throughput runs.

use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

/// Seconds and counts per part of a step, in the order the parts first ran.
pub struct StepProfile {
    enabled: bool,
    last: Instant,
    parts: Vec<(&'static str, f64, u64)>,
}

impl StepProfile {
    /// On when the environment sets `JURIS_STEP_PROFILE` to anything but `0` or empty.
    pub fn from_env() -> Self {
        Self::new(std::env::var("JURIS_STEP_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"))
    }

    /// A profile that records nothing.
    pub fn off() -> Self {
        Self::new(false)
    }

    fn new(enabled: bool) -> Self {
        StepProfile {
            enabled,
            last: Instant::now(),
            parts: Vec::new(),
        }
    }

    /// Starts the clock (after the device's queued work).
    pub fn start(&mut self, device: &Device) -> Result<()> {
        if self.enabled {
            device.synchronize()?;
            self.last = Instant::now();
        }
        Ok(())
    }

    /// Charges the time since the last boundary, queued device work included, to `part`.
    pub fn lap(&mut self, device: &Device, part: &'static str) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        device.synchronize()?;
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        match self.parts.iter_mut().find(|p| p.0 == part) {
            Some(p) => {
                p.1 += dt;
                p.2 += 1;
            }
            None => self.parts.push((part, dt, 1)),
        }
        Ok(())
    }

    /// One line: milliseconds per occurrence of each part and its share, or `None` when off.
    pub fn summary(&self) -> Option<String> {
        if !self.enabled || self.parts.is_empty() {
            return None;
        }
        let total: f64 = self.parts.iter().map(|p| p.1).sum();
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(name, s, n)| {
                format!(
                    "{name} {:.1} ms ({:.0} %)",
                    1e3 * s / *n as f64,
                    100.0 * s / total.max(1e-12)
                )
            })
            .collect();
        Some(format!(
            "step profile (device synchronized at each boundary): {}",
            parts.join(", ")
        ))
    }
}
