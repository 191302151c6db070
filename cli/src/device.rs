//! `--device` and `--dtype`, shared by every subcommand that loads a model.

use anyhow::bail;
use edkd_models::LoadOptions;
use tch::{Device, Kind};

#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "EDKD_DEVICE")]
    pub device: String,
    /// f32 or bf16 (CPU); f32, f16 or bf16 (CUDA).
    #[arg(long, default_value = "f32", env = "EDKD_DTYPE")]
    pub dtype: String,
}

pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    Ok(match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::Cuda(n),
            None => bail!("--device {other:?}: expected cpu, cuda or cuda:N"),
        },
    })
}

pub fn parse_dtype(s: &str) -> anyhow::Result<Kind> {
    Ok(match s {
        "f32" | "float32" => Kind::Float,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f16" | "float16" => Kind::Half,
        other => bail!("--dtype {other:?}: expected f32, bf16 or f16"),
    })
}

impl DeviceArgs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = parse_device(&self.device)?;
        if let Device::Cuda(n) = device {
            let count = tch::Cuda::device_count();
            if n as i64 >= count {
                bail!("--device cuda:{n}: this machine has {count} CUDA device(s)");
            }
        }
        Ok(LoadOptions {
            device,
            kind: parse_dtype(&self.dtype)?,
        })
    }
}
