//! The collectives in one process (no launcher): MPI makes a world of one whose in-place
//! all-reduce and broadcast leave data as it is, and the NCCL probe either connects or
//! hands MPI back with a reason, without panicking on machines with no CUDA or no NCCL.
//! Several ranks are tested under `mpirun` in cli/tests/distributed.rs.

use edkd_trainer::dist::Collective;
use edkd_trainer::mpi::Mpi;
use edkd_trainer::nccl::{self, Nccl};
use tch::{Device, Kind, Tensor};

#[test]
fn a_lone_process_is_an_mpi_world_of_one_and_the_nccl_probe_never_panics() {
    // MPI initialises once per process: this is the only test of this binary.
    let mut mpi = Mpi::init_always().expect("MPI was not initialised before");
    assert_eq!((mpi.rank(), mpi.world()), (0, 1));
    assert!(
        mpi.describe().starts_with("MPI, 1 rank"),
        "{}",
        mpi.describe()
    );

    // Real MPI calls (no world-of-one shortcut): a wrong MPI_IN_PLACE would crash here.
    let mut values = [1.5f64, -2.0, 1e300];
    mpi.all_reduce_slice(&mut values);
    assert_eq!(values, [1.5, -2.0, 1e300]);
    let mut floats: Vec<f32> = (0..1000).map(|i| i as f32).collect();
    mpi.all_reduce_slice(&mut floats);
    assert_eq!(floats[999], 999.0);
    let mut bytes = [7u8, 8, 9];
    mpi.broadcast_slice(&mut bytes, 0);
    assert_eq!(bytes, [7, 8, 9]);
    let mut t = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
    mpi.all_reduce_sum(&mut t);
    assert_eq!(Vec::<f32>::try_from(&t).unwrap(), [1.0, 2.0, 3.0]);
    mpi.barrier();

    let present = nccl::libraries_present();
    match Nccl::init(mpi, Device::Cuda(0)) {
        Ok(mut comm) => {
            assert!(present.is_ok());
            assert_eq!(comm.world(), 1);
            let mut t = Tensor::ones([4], (Kind::Float, Device::Cuda(0)));
            comm.all_reduce_sum(&mut t);
            assert_eq!(t.sum(Kind::Float).double_value(&[]), 4.0);
            // CPU tensors go through MPI.
            let mut c = Tensor::from_slice(&[5.0f64]);
            comm.all_reduce_sum(&mut c);
            assert_eq!(c.double_value(&[0]), 5.0);
        }
        Err(e) => {
            assert!(!e.reason.is_empty());
            if let Err(why) = present {
                assert_eq!(e.reason, why);
            }
            // MPI comes back usable.
            let mut mpi = e.mpi;
            let mut x = [3.0f64];
            mpi.all_reduce_slice(&mut x);
            assert_eq!(x, [3.0]);
        }
    }
}
