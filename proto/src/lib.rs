//! edkd's gRPC contracts, generated from the versioned `.proto` files in this crate.

/// `edkd.teacher.v1`: the teacher scoring service.
pub mod teacher {
    pub mod v1 {
        tonic::include_proto!("edkd.teacher.v1");
    }
}

/// Encoded `FileDescriptorSet` of every package here, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/edkd_descriptor.bin"));
