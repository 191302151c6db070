//! `--device` and `--dtype`, shared by every subcommand that loads a model (the names are
//! parsed by `edkd_models::device`).

use edkd_models::LoadOptions;
use edkd_models::device::{check_available, parse_device, parse_dtype};

#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "EDKD_DEVICE")]
    pub device: String,
    /// f32 or bf16 (CPU); f32, f16 or bf16 (CUDA).
    #[arg(long, default_value = "f32", env = "EDKD_DTYPE")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn load_options(&self) -> anyhow::Result<LoadOptions> {
        let device = parse_device(&self.device)?;
        check_available(device)?;
        Ok(LoadOptions {
            device,
            kind: parse_dtype(&self.dtype)?,
        })
    }
}
