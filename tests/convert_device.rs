//! The writers read device storages back (DESIGN.md, "Placement on devices"): a checkpoint
//! placed on a stand-in device (host memory behind `Backend` / `DeviceBuffer`, through the
//! staged pipeline) converts to the same bytes as the same checkpoint on the CPU.

mod common;

use std::sync::Arc;

use common::root;
use ptload::place::pipeline::{place_staged, HostStaging, Staging};
use ptload::place::{
    Backend, Control, DeviceBuffer, PlacementJob, Placer, RecordReader, StorageData,
};
use ptload::{Device, Loader, Result, Writer};

#[derive(Debug)]
struct Buffer(Vec<u8>);

impl DeviceBuffer for Buffer {
    fn device(&self) -> Device {
        Device::WebGpu
    }
    fn nbytes(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_back(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        let start = offset as usize;
        out.copy_from_slice(&self.0[start..start + out.len()]);
        Ok(())
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Host staging whose finished storages become device buffers.
struct ToDevice(HostStaging);

impl Staging for ToDevice {
    type Buffer = <HostStaging as Staging>::Buffer;
    fn slot_count(&self) -> usize {
        self.0.slot_count()
    }
    fn slot_len(&self) -> usize {
        self.0.slot_len()
    }
    fn allocate(&mut self, job: &PlacementJob) -> Result<Self::Buffer> {
        self.0.allocate(job)
    }
    fn slot(&mut self, slot: usize) -> Result<&mut [u8]> {
        self.0.slot(slot)
    }
    fn upload(&mut self, slot: usize, len: usize, dst: &mut Self::Buffer, at: u64) -> Result<()> {
        self.0.upload(slot, len, dst, at)
    }
    fn finish(&mut self) -> Result<()> {
        self.0.finish()
    }
    fn storage_data(&mut self, buffer: Self::Buffer, job: &PlacementJob) -> Result<StorageData> {
        match self.0.storage_data(buffer, job)? {
            StorageData::Owned(bytes) => Ok(StorageData::Device(Arc::new(Buffer(bytes)))),
            other => Ok(other),
        }
    }
}

#[derive(Debug)]
struct StandIn;

struct StandInPlacer;

impl Placer for StandInPlacer {
    fn place_all(
        &mut self,
        reader: &RecordReader<'_>,
        jobs: &[PlacementJob],
        control: &mut Control<'_>,
    ) -> Result<Vec<StorageData>> {
        place_staged(
            &mut ToDevice(HostStaging::new(2, 64)),
            reader,
            jobs,
            control,
        )
    }
}

impl Backend for StandIn {
    fn check(&self, device: &Device) -> Option<Result<Device>> {
        (*device == Device::WebGpu).then_some(Ok(Device::WebGpu))
    }
    fn placer(&self, _device: &Device) -> Result<Box<dyn Placer + '_>> {
        Ok(Box::new(StandInPlacer))
    }
}

#[test]
fn device_storages_convert_as_host_ones() {
    let input = root().join("tests/fixtures/convert/mixed.pt");
    let cpu = ptload::load(&input).unwrap();
    let device = Loader::new()
        .backend(Arc::new(StandIn))
        .map_location("webgpu")
        .load(&input)
        .unwrap();
    assert!(device.tensors().all(|(_, t)| t.device() == Device::WebGpu));
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.safetensors", "out.pt"] {
        let a = dir.path().join(format!("cpu-{name}"));
        let b = dir.path().join(format!("device-{name}"));
        if name.ends_with(".pt") {
            Writer::new().save(&cpu, &a).unwrap();
            Writer::new().save(&device, &b).unwrap();
        } else {
            Writer::new().save_safetensors(&cpu, &a).unwrap();
            Writer::new().save_safetensors(&device, &b).unwrap();
        }
        assert_eq!(
            std::fs::read(&a).unwrap(),
            std::fs::read(&b).unwrap(),
            "{name}"
        );
    }
}
