//! The NCCL backend: collectives on the tensors' device pointers, enqueued on the default stream.
//!
//! tch has no stream API, and libtorch launches on the legacy default stream, so a collective
//! enqueued there is ordered after the kernels that produced its input and before those that read
//! its output; nothing waits on the host. The caching allocator is stream-ordered on that same
//! stream, which is why a temporary (a contiguous copy of an input) may be dropped right after the
//! enqueue. Each collective is followed by a [`Marker`] that the [`Watchdog`] polls: a collective
//! that does not complete within the timeout aborts the communicator and ends the process with a
//! message naming the collective and the ranks behind, so the launcher restarts the group.
//! CPU tensors (loss sums, checksums) are staged through the device and copied back.
//!
//! Sums: NCCL's ring/tree order is fixed for a given world size and topology, and every rank
//! receives the same bytes; runs are reproducible on the same machines, not across world sizes.

use std::ffi::c_int;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use fomaml_store::StoreClient;
use tch::{Device, Kind, Tensor};

use super::comm::{check, CommError, Communicator, OpDesc, OpKind};
use super::cuda::{Context, Marker};
use super::nccl_lib::{NcclApi, Status, SUCCESS};
use super::watchdog::{die, Deadline, Hooks, Watchdog};

/// NCCL's communicator handle, as an address so the watchdog can abort it from its thread.
#[derive(Clone, Copy)]
struct Handle(usize);

impl Handle {
    fn raw(self) -> ncclComm_t {
        self.0 as ncclComm_t
    }
}

pub struct NcclComm {
    api: Arc<NcclApi>,
    comm: Handle,
    context: Context,
    rank: usize,
    world_size: usize,
    seq: u64,
    broken: Option<String>,
    watchdog: Option<Watchdog>,
}

fn setup_error(rank: usize, world_size: usize, detail: impl Into<String>) -> CommError {
    CommError::Setup { rank, world_size, detail: detail.into() }
}

/// The NCCL element type of a tensor kind.
pub fn nccl_type(kind: Kind) -> Option<ncclDataType_t> {
    use ncclDataType_t::*;
    Some(match kind {
        Kind::Int8 => ncclInt8,
        Kind::Uint8 => ncclUint8,
        Kind::Int => ncclInt32,
        Kind::Int64 => ncclInt64,
        Kind::Half => ncclFloat16,
        Kind::Float => ncclFloat32,
        Kind::Double => ncclFloat64,
        Kind::BFloat16 => ncclBfloat16,
        _ => return None,
    })
}

/// NCCL's unique id as the bytes that travel through the store.
fn id_bytes(id: &ncclUniqueId) -> Vec<u8> {
    id.internal.iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(bytes: &[u8]) -> Option<ncclUniqueId> {
    let mut id = ncclUniqueId { internal: [0; 128] };
    if bytes.len() != id.internal.len() {
        return None;
    }
    for (dst, &b) in id.internal.iter_mut().zip(bytes) {
        *dst = b as _;
    }
    Some(id)
}

/// Where the watchdog reads and writes progress: its own store connection.
pub struct ProgressStore {
    pub client: StoreClient,
    /// Key prefix of this communicator (the attempt's group).
    pub prefix: String,
}

impl NcclComm {
    /// Joins `world_size` ranks on CUDA device `ordinal`: rank 0 draws NCCL's unique id and
    /// publishes it in the store under `group`; every rank reads it and initialises NCCL.
    /// `progress` (a second store connection) lets a timed-out rank name the ranks behind it.
    pub fn connect(
        store: &mut StoreClient,
        progress: Option<StoreClient>,
        rank: usize,
        world_size: usize,
        ordinal: usize,
        group: &str,
        timeout: Duration,
    ) -> Result<NcclComm, CommError> {
        let fail = |d: String| setup_error(rank, world_size, d);
        let api = NcclApi::shared().map_err(fail)?;
        let context = Context::primary(ordinal).map_err(fail)?;
        let key = format!("{group}/nccl_unique_id");
        let id = if rank == 0 {
            let id = unique_id(&api).map_err(fail)?;
            store.set(&key, &id_bytes(&id)).map_err(|e| fail(format!("publishing NCCL's unique id: {e}")))?;
            id
        } else {
            let bytes = store.get(&key).map_err(|e| fail(format!("waiting for rank 0's NCCL unique id: {e}")))?;
            id_from_bytes(&bytes)
                .ok_or_else(|| fail(format!("the store's {key} has {} bytes, not 128", bytes.len())))?
        };
        let progress = progress.map(|client| ProgressStore { client, prefix: format!("{group}/nccl_done") });
        NcclComm::init(api, context, id, rank, world_size, timeout, progress)
    }

    /// A communicator of one rank on CUDA device `ordinal`: the NCCL path end to end on one GPU.
    pub fn single(ordinal: usize, timeout: Duration) -> Result<NcclComm, CommError> {
        let fail = |d: String| setup_error(0, 1, d);
        let api = NcclApi::shared().map_err(fail)?;
        let context = Context::primary(ordinal).map_err(fail)?;
        let id = unique_id(&api).map_err(fail)?;
        NcclComm::init(api, context, id, 0, 1, timeout, None)
    }

    fn init(
        api: Arc<NcclApi>,
        context: Context,
        id: ncclUniqueId,
        rank: usize,
        world_size: usize,
        timeout: Duration,
        progress: Option<ProgressStore>,
    ) -> Result<NcclComm, CommError> {
        let mut raw: ncclComm_t = std::ptr::null_mut();
        let deadline = Deadline::arm(
            timeout,
            format!(
                "rank {rank} of {world_size}: NCCL's initialisation did not complete within {} s (a rank \
                 died or never started); set {} to change the timeout",
                fomaml_store::format_secs(timeout),
                super::TIMEOUT_ENV
            ),
        );
        // SAFETY: `raw` receives the communicator; the id is NCCL's own bytes. This blocks until
        // every rank has called it, bounded by the deadline.
        let status = unsafe { (api.comm_init_rank)(&mut raw, world_size as c_int, id, rank as c_int) };
        drop(deadline);
        if status != SUCCESS {
            let detail =
                format!("ncclCommInitRank on CUDA device {}: {}", context.ordinal(), api.describe(status, None));
            return Err(setup_error(rank, world_size, detail));
        }
        let comm = Handle(raw as usize);
        let watchdog = Watchdog::spawn(
            rank,
            world_size,
            timeout,
            move || {
                let _ = context.make_current();
            },
            hooks(rank, world_size, progress),
        );
        Ok(NcclComm { api, comm, context, rank, world_size, seq: 0, broken: None, watchdog: Some(watchdog) })
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.context.ordinal())
    }

    /// NCCL's version and where it was loaded from.
    pub fn library(&self) -> String {
        format!("NCCL {} ({})", self.api.version, self.api.source)
    }

    /// Checks, enqueues through `enqueue`, and hands the collective to the watchdog.
    fn collective(
        &mut self,
        desc: OpDesc,
        tensors: &[&Tensor],
        valid: impl FnOnce() -> Result<(), String>,
        enqueue: impl FnOnce(&NcclApi, ncclComm_t, ncclDataType_t) -> Status,
    ) -> Result<(), CommError> {
        let (op, seq, rank) = (desc.op, desc.seq, self.rank);
        if let Some(first) = &self.broken {
            return Err(CommError::Broken { op, rank, first: first.clone() });
        }
        let invalid = |detail: String| CommError::InvalidArgument { op, seq, rank, detail };
        valid().map_err(invalid)?;
        for t in tensors {
            if t.device() != self.device() {
                return Err(invalid(format!(
                    "a tensor is on {:?}; this communicator is on {:?}",
                    t.device(),
                    self.device()
                )));
            }
        }
        let kind = tensors.first().map_or(Kind::Float, |t| t.kind());
        let dtype = nccl_type(kind).ok_or_else(|| invalid(format!("NCCL cannot carry {kind:?} tensors")))?;
        // libtorch's device guards may have left another device's context current on this thread.
        self.context.make_current().map_err(|detail| CommError::Tensor { op, seq, rank, detail })?;
        let status = enqueue(&self.api, self.comm.raw(), dtype);
        let mut async_status: Status = SUCCESS;
        // SAFETY: a live communicator; the out-parameter is a local.
        let checked = unsafe { (self.api.comm_get_async_error)(self.comm.raw(), &mut async_status) };
        let failed = [status, checked, async_status].into_iter().find(|&s| s != SUCCESS);
        if let Some(s) = failed {
            let detail = format!("NCCL: {}", self.api.describe(s, Some(self.comm.raw())));
            self.broken = Some(detail.clone());
            return Err(CommError::Tensor { op, seq, rank, detail });
        }
        let marker = Marker::record().map_err(|detail| CommError::Tensor { op, seq, rank, detail })?;
        if let Some(w) = &self.watchdog {
            w.watch(desc, Box::new(marker));
        }
        Ok(())
    }

    fn next(&mut self, op: OpKind, t: &Tensor, root: usize) -> OpDesc {
        self.seq += 1;
        let bytes = (t.numel() * t.kind().elt_size_in_bytes()) as u64;
        OpDesc { op, seq: self.seq, bytes, dtype: Some(t.kind()), root: root as u32 }
    }

    /// Runs `f` on device copies of CPU tensors and copies the written one back.
    fn staged(
        &mut self,
        written: &Tensor,
        others: &[&Tensor],
        f: impl FnOnce(&mut Self, &Tensor, &[Tensor]) -> Result<(), CommError>,
    ) -> Result<(), CommError> {
        let device = self.device();
        let on_device = written.to_device(device);
        let others: Vec<Tensor> = others.iter().map(|t| t.to_device(device)).collect();
        f(self, &on_device, &others)?;
        // The copy back waits for the collective on the default stream.
        written.shallow_clone().copy_(&on_device.to_device(Device::Cpu));
        Ok(())
    }
}

fn unique_id(api: &NcclApi) -> Result<ncclUniqueId, String> {
    let mut id = ncclUniqueId { internal: [0; 128] };
    // SAFETY: `id` is NCCL's 128-byte out-parameter.
    let status = unsafe { (api.get_unique_id)(&mut id) };
    if status != SUCCESS {
        return Err(format!("ncclGetUniqueId: {}", api.describe(status, None)));
    }
    Ok(id)
}

/// Progress through the store; on timeout report like `main` does and exit 1 (see [`die`]).
fn hooks(rank: usize, world_size: usize, progress: Option<ProgressStore>) -> Hooks {
    let store = progress.map(|p| Arc::new(Mutex::new(p)));
    let writer = store.clone();
    Hooks {
        publish: Box::new(move |seq| {
            if let Some(s) = &writer {
                let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
                let key = format!("{}/{rank}", s.prefix);
                // Best effort: progress only sharpens a timeout's message.
                let _ = s.client.set(&key, seq.to_string().as_bytes());
            }
        }),
        progress: Box::new(move || {
            let Some(s) = &store else { return vec![None; world_size] };
            let mut s = s.lock().unwrap_or_else(|e| e.into_inner());
            (0..world_size)
                .map(|r| {
                    let key = format!("{}/{r}", s.prefix);
                    let bytes = s.client.get_timeout(&key, Duration::from_millis(200)).ok()?;
                    String::from_utf8(bytes).ok()?.parse().ok()
                })
                .collect()
        }),
        on_timeout: Box::new(move |message| die(&message)),
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&mut self, tensor: &Tensor) -> Result<(), CommError> {
        if tensor.device() == Device::Cpu {
            return self.staged(tensor, &[], |c, t, _| c.all_reduce_sum(t));
        }
        let desc = self.next(OpKind::AllReduce, tensor, 0);
        let n = tensor.numel();
        let check = || {
            check::writable("tensor", tensor)?;
            check::summable(tensor.kind())
        };
        self.collective(desc, &[tensor], check, |api, comm, dtype| {
            let p = tensor.data_ptr();
            // SAFETY: a contiguous tensor of n elements on this communicator's device, in place.
            unsafe { (api.all_reduce)(p, p, n, dtype, ncclRedOp_t::ncclSum, comm, std::ptr::null_mut()) }
        })
    }

    fn all_gather(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        if output.device() == Device::Cpu {
            return self.staged(output, &[input], |c, out, ins| c.all_gather(&ins[0], out));
        }
        let desc = self.next(OpKind::AllGather, input, 0);
        let world = self.world_size;
        let input = input.contiguous();
        let n = input.numel();
        self.collective(
            desc,
            &[&input, output],
            || check::gathered(&input, output, world),
            |api, comm, dtype| {
                // SAFETY: input has n elements and output world × n, both contiguous on this device.
                unsafe { (api.all_gather)(input.data_ptr(), output.data_ptr(), n, dtype, comm, std::ptr::null_mut()) }
            },
        )
    }

    fn reduce_scatter_sum(&mut self, input: &Tensor, output: &Tensor) -> Result<(), CommError> {
        if output.device() == Device::Cpu {
            return self.staged(output, &[input], |c, out, ins| c.reduce_scatter_sum(&ins[0], out));
        }
        let desc = self.next(OpKind::ReduceScatter, input, 0);
        let world = self.world_size;
        let input = input.contiguous();
        let n = output.numel();
        self.collective(
            desc,
            &[&input, output],
            || check::scattered(&input, output, world),
            |api, comm, dtype| {
                let op = ncclRedOp_t::ncclSum;
                // SAFETY: input has world × n elements and output n, both contiguous on this device.
                unsafe {
                    (api.reduce_scatter)(input.data_ptr(), output.data_ptr(), n, dtype, op, comm, std::ptr::null_mut())
                }
            },
        )
    }

    fn broadcast(&mut self, tensor: &Tensor, root: usize) -> Result<(), CommError> {
        if tensor.device() == Device::Cpu {
            return self.staged(tensor, &[], |c, t, _| c.broadcast(t, root));
        }
        let desc = self.next(OpKind::Broadcast, tensor, root);
        let (world, n) = (self.world_size, tensor.numel());
        let check = || {
            check::writable("tensor", tensor)?;
            check::root(root, world)
        };
        self.collective(desc, &[tensor], check, |api, comm, dtype| {
            let p = tensor.data_ptr();
            // SAFETY: a contiguous tensor of n elements on this device, in place.
            unsafe { (api.broadcast)(p, p, n, dtype, root as c_int, comm, std::ptr::null_mut()) }
        })
    }

    /// An all-reduce of one element, then a wait for it on the host: every rank has entered.
    fn barrier(&mut self) -> Result<(), CommError> {
        let token = Tensor::zeros([1], (Kind::Float, self.device()));
        self.all_reduce_sum(&token)?;
        // Reading the value waits for the collective (the watchdog bounds that wait).
        token.f_double_value(&[0]).map_err(|e| CommError::Tensor {
            op: OpKind::Barrier,
            seq: self.seq,
            rank: self.rank,
            detail: e.to_string(),
        })?;
        Ok(())
    }
}

impl Drop for NcclComm {
    fn drop(&mut self) {
        // Waits for every enqueued collective (bounded by the watchdog's timeout).
        drop(self.watchdog.take());
        // After a failure the communicator is left to the process's end: tearing it down may wait
        // on ranks that are still inside a collective.
        if self.broken.is_some() || std::thread::panicking() {
            return;
        }
        let (api, comm) = (self.api.clone(), self.comm);
        let (done, wait) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // SAFETY: nothing uses the communicator after this.
            let _ = unsafe { (api.comm_destroy)(comm.raw()) };
            let _ = done.send(());
        });
        // A destroy that waits on peers that are gone is abandoned, not waited for.
        let _ = wait.recv_timeout(Duration::from_secs(30));
    }
}
