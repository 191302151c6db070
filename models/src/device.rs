//! Device and dtype names (`cpu`, `cuda`, `cuda:N`; `f32`, `bf16`, `f16`), parsed in one
//! place for every crate and command.

use tch::{Device, Kind};

use crate::error::{Error, Result};

const DEVICES: &str = "cpu, cuda or cuda:N";
const DTYPES: &str = "f32, bf16, f16 or f64 (f64 for exactness checks)";

/// Parses `cpu` / `cuda` (device 0) / `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| Error::Value {
                field: "device",
                value: s.to_owned(),
                expected: DEVICES,
            }),
    }
}

/// Parses a weight dtype: `f32`/`float32`, `bf16`/`bfloat16`, `f16`/`float16`.
pub fn parse_dtype(s: &str) -> Result<Kind> {
    match s {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" => Ok(Kind::Half),
        "f64" | "float64" => Ok(Kind::Double),
        _ => Err(Error::Value {
            field: "dtype",
            value: s.to_owned(),
            expected: DTYPES,
        }),
    }
}

/// Cores of this machine (1 if unknown).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Gives the calling thread its own libtorch intra-op thread count, leaving other threads'
/// counts alone: ATen's OpenMP pool and MKL keep the count per calling thread, so a
/// teacher's batcher thread and a trainer thread in one process can split the cores
/// instead of each starting a team as wide as the machine (four busy threads on two cores
/// thrash). `0` leaves the thread as it is.
///
/// The count is read first: ATen applies the process-wide count to a thread lazily, at its
/// first parallel operation, which would otherwise overwrite a count set before it.
pub fn set_thread_intra_op_threads(threads: usize) {
    if threads == 0 {
        return;
    }
    let _ = tch::get_num_threads();
    tch::set_num_threads(threads.min(i32::MAX as usize) as i32);
}

/// Whether a `/proc/cpuinfo` text names bf16 instructions (`avx512_bf16` or `amx_bf16`) on
/// every processor it lists.
pub fn cpuinfo_has_bf16(cpuinfo: &str) -> bool {
    let mut flags = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .peekable();
    flags.peek().is_some()
        && flags.all(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
}

/// A warning for bf16 weights on a CPU without bf16 instructions, where libtorch emulates
/// bf16 matmuls: measured here (2-core AMD EPYC, AVX2 only), SmolLM2-135M ran 6.6x slower in
/// bf16 than in f32, in edkd and in transformers alike. `None` elsewhere, or where the
/// CPU's flags cannot be read.
pub fn slow_bf16_warning(device: Device, kind: Kind) -> Option<String> {
    if device != Device::Cpu || kind != Kind::BFloat16 {
        return None;
    }
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    (!cpuinfo_has_bf16(&info)).then(|| {
        "bf16 weights on a CPU without bf16 instructions (no avx512_bf16 or amx_bf16 in \
         /proc/cpuinfo): libtorch emulates them, several times slower than f32 (6.6x on a \
         2-core AVX2 machine); f32 is the faster choice here"
            .to_owned()
    })
}

/// Fails unless `device` exists on this machine (a CUDA index below the device count).
pub fn check_available(device: Device) -> Result<()> {
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            return Err(Error::Input(format!(
                "device cuda:{n}: this machine has {count} CUDA device(s)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn bf16_instructions_are_read_from_every_processor() {
        let with = "processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n";
        let amx = "flags\t\t: sse avx2 amx_bf16 amx_tile\n";
        let without = "processor : 0\nflags : fpu avx2 avx512f avx512_vnni\n";
        assert!(cpuinfo_has_bf16(with));
        assert!(cpuinfo_has_bf16(amx));
        assert!(!cpuinfo_has_bf16(without));
        assert!(
            !cpuinfo_has_bf16(&format!("{with}{without}")),
            "one CPU lacks it"
        );
        assert!(!cpuinfo_has_bf16("no flags lines"));
        assert_eq!(slow_bf16_warning(Device::Cpu, Kind::Float), None);
        assert_eq!(slow_bf16_warning(Device::Cuda(0), Kind::BFloat16), None);
    }

    #[test]
    fn intra_op_threads_are_per_thread() {
        let outer = tch::get_num_threads();
        let inner = std::thread::spawn(|| {
            set_thread_intra_op_threads(1);
            // A parallel op after the call must not bring the process-wide count back.
            let _ = Tensor::ones([512, 512], (Kind::Float, Device::Cpu)).sum(Kind::Float);
            tch::get_num_threads()
        })
        .join()
        .unwrap();
        assert_eq!(inner, 1);
        assert_eq!(tch::get_num_threads(), outer);
    }

    #[test]
    fn devices_and_dtypes_parse_and_bad_names_are_named() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), Device::Cuda(0));
        assert_eq!(parse_device("cuda:3").unwrap(), Device::Cuda(3));
        let err = parse_device("gpu").unwrap_err().to_string();
        assert_eq!(err, r#"device "gpu": expected cpu, cuda or cuda:N"#);
        assert!(parse_device("cuda:x").is_err());
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert_eq!(parse_dtype("float16").unwrap(), Kind::Half);
        let err = parse_dtype("int8").unwrap_err().to_string();
        assert!(
            err.contains("dtype \"int8\"") && err.contains("f32, bf16, f16 or f64"),
            "{err}"
        );
    }

    #[test]
    fn the_cpu_is_always_available() {
        check_available(Device::Cpu).unwrap();
        let count = tch::Cuda::device_count();
        let err = check_available(Device::Cuda(count as usize)).unwrap_err();
        assert!(err.to_string().contains("CUDA device(s)"), "{err}");
    }
}
