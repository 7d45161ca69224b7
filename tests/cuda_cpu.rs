//! The `cuda` feature without a GPU (CI): the backend is registered by default, and a load that
//! maps storages to CUDA fails with torch's messages before any byte is read, never panicking;
//! the device-count rules through a faked count.

mod common;

use std::sync::Arc;

use ptload::place::cuda::CudaBackend;
use ptload::{ErrorKind, Loader};

const NOT_AVAILABLE: &str =
    "Attempting to deserialize object on a CUDA device but torch.cuda.is_available() is False";

/// One float32 storage tagged `cuda:0` whose record is not a deflate stream: reading its bytes
/// fails, so an error about the device proves nothing was read.
fn unreadable_cuda_checkpoint() -> Vec<u8> {
    let pickle = common::Pickle::new()
        .op(b"(")
        .storage_at("FloatStorage", "0", "cuda:0", 1)
        .op(b"t")
        .stop();
    common::ZipBuilder::new("archive")
        .add("data.pkl", &pickle)
        .add_entry("archive/data/0", b"\xff\xfe\xfd\xfc", 8, 4)
        .add("version", b"3\n")
        .finish()
}

#[test]
fn the_fixture_fails_when_read() {
    let e = Loader::new()
        .map_location("cpu")
        .load_bytes(unreadable_cuda_checkpoint())
        .unwrap_err();
    assert!(matches!(e.kind(), ErrorKind::Record { .. }), "{e}");
}

#[test]
fn the_default_loader_checks_the_driver_before_reading() {
    let bytes = unreadable_cuda_checkpoint();
    match CudaBackend::new().device_count() {
        // CI: no driver. torch's message, with the reason.
        Err(reason) => {
            let e = Loader::new().load_bytes(bytes).unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Location { .. }), "{e}");
            let msg = e.to_string();
            assert!(msg.contains(NOT_AVAILABLE), "{msg}");
            assert!(msg.contains(&reason), "{msg}");
        }
        // A GPU machine: one device past the last.
        Ok(n) => {
            let e = Loader::new()
                .map_location(format!("cuda:{n}"))
                .load_bytes(bytes)
                .unwrap_err();
            assert!(matches!(e.kind(), ErrorKind::Location { .. }), "{e}");
            assert!(
                e.to_string()
                    .contains(&format!("torch.cuda.device_count() is {n}")),
                "{e}"
            );
        }
    }
}

#[test]
fn device_counts_are_checked_before_reading() {
    let load = |count: usize, to: &str| {
        Loader::new()
            .backend(Arc::new(CudaBackend::with_device_count(Ok(count))))
            .map_location(to)
            .load_bytes(unreadable_cuda_checkpoint())
            .unwrap_err()
    };
    let e = load(0, "cuda:0");
    assert!(matches!(e.kind(), ErrorKind::Location { .. }), "{e}");
    assert!(e.to_string().contains(NOT_AVAILABLE), "{e}");
    for (count, to) in [(1, "cuda:1"), (2, "cuda:2"), (1, "cuda:7")] {
        let e = load(count, to);
        assert!(matches!(e.kind(), ErrorKind::Location { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            format!(
                "<memory>: Attempting to deserialize object on CUDA device {} but torch.cuda.device_count() is {count}. \
                 Please use map_location to map your storages to an existing device.",
                &to[5..]
            )
        );
    }
    // Two devices say yes to cuda:1; placing then still needs the driver, and fails cleanly
    // without one (or reads the bad record with one).
    let e = load(2, "cuda:1");
    assert!(
        matches!(
            e.kind(),
            ErrorKind::Location { .. } | ErrorKind::Record { .. }
        ),
        "{e}"
    );
}
