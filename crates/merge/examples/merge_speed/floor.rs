//! The I/O floor: the same bytes as a merge read and written with no computation, once
//! sequentially and once by the merge's thread count.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Read `files` fully, sequentially, into `buf` (page cache → user memory). Returns bytes.
pub(crate) fn read_all(files: &[PathBuf], buf: &mut [u8]) -> u64 {
    let mut total = 0u64;
    for p in files {
        let mut f = File::open(p).expect("open an input for the floor");
        loop {
            let n = f.read(buf).expect("read an input for the floor");
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    total
}

/// Write `bytes` bytes from `buf` to a new file `path` (no sync, like the merge).
pub(crate) fn write_file(path: &Path, bytes: u64, buf: &[u8]) {
    let mut f = File::create(path).expect("create the floor's scratch file");
    let mut left = bytes;
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.write_all(&buf[..n])
            .expect("write the floor's scratch file");
        left -= n as u64;
    }
}

/// The parallel floor: `threads` workers read both inputs and write one output file of
/// `out_bytes` (created at its final length, positioned writes: what the merge's writer does)
/// at the same time, in 4 MiB pieces interleaved by relative position (read A, read B, write),
/// with no computation. Returns seconds.
pub(crate) fn parallel_floor(files: &[PathBuf], out: &Path, out_bytes: u64, threads: usize) -> f64 {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::AtomicUsize;
    const PIECE: u64 = 4 << 20;
    enum Item {
        Read(usize, u64, u64),
        Write(u64, u64),
    }
    let inputs: Vec<File> = files
        .iter()
        .map(|p| File::open(p).expect("open an input for the floor"))
        .collect();
    // (relative position, item): pieces of every file, merged by how far into its file they are.
    let mut items: Vec<(f64, Item)> = Vec::new();
    let mut pieces = |len: u64, make: &dyn Fn(u64, u64) -> Item| {
        let mut off = 0;
        while off < len {
            let n = PIECE.min(len - off);
            items.push((off as f64 / len as f64, make(off, n)));
            off += n;
        }
    };
    for (i, p) in files.iter().enumerate() {
        pieces(file_size(p), &|o, n| Item::Read(i, o, n));
    }
    pieces(out_bytes, &|o, n| Item::Write(o, n));
    items.sort_by(|a, b| a.0.total_cmp(&b.0));
    let t = Instant::now();
    let file = File::create(out).expect("create the floor's scratch file");
    file.set_len(out_bytes)
        .expect("size the floor's scratch file");
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let mut buf = vec![1u8; PIECE as usize];
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((_, item)) = items.get(k) else { break };
                    match *item {
                        Item::Read(i, o, n) => inputs[i]
                            .read_exact_at(&mut buf[..n as usize], o)
                            .expect("read an input for the floor"),
                        Item::Write(o, n) => file
                            .write_all_at(&buf[..n as usize], o)
                            .expect("write the floor's scratch file"),
                    }
                }
            });
        }
    });
    drop(file);
    t.elapsed().as_secs_f64()
}

pub(crate) fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}
