//! One pair's measurements: the merge run `--runs` times, each followed by the I/O floor.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};
use temper_merge::{MergeConfig, MergeOptions, run_merge};

use crate::floor::{file_size, parallel_floor, read_all, write_file};
use crate::measure::{
    PhaseClock, Sampler, loadavg, median, mib, proc_io, proc_stat, round3, status_kb, utc_now,
};
use crate::{Args, SLERP_PARAMS};

fn safetensors_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub(crate) fn bench_pair(name: &str, a: &Path, b: &Path, args: &Args, sampler: &Sampler) -> Value {
    let out_root = args
        .out
        .clone()
        .unwrap_or_else(|| args.models.join("temper-out"));
    std::fs::create_dir_all(&out_root).expect("create the output root");
    let out_dir = out_root.join(format!("out-{name}"));
    let a = std::fs::canonicalize(a).expect("model A exists");
    let b = std::fs::canonicalize(b).expect("model B exists");
    let yaml = format!(
        "models:\n  - model: {a}\n  - model: {b}\nbase_model: {a}\n{SLERP_PARAMS}",
        a = a.display(),
        b = b.display()
    );
    let config = MergeConfig::from_yaml(&yaml, "merge_speed").expect("the SLERP config parses");
    let options = MergeOptions {
        out_shard_size: args.shard_size,
        copy_tokenizer: false,
        threads: args.threads,
        ..MergeOptions::default()
    };
    let threads = args.threads.unwrap_or_else(rayon::current_num_threads);
    let inputs: Vec<PathBuf> = safetensors_files(&a)
        .into_iter()
        .chain(safetensors_files(&b))
        .collect();
    let in_bytes: u64 = inputs.iter().map(|p| file_size(p)).sum();

    // Warm the page cache (as bench.sh does) and size the floor's buffer.
    let mut buf = vec![0u8; 8 << 20];
    read_all(&inputs, &mut buf);

    let mut runs = Vec::new();
    let mut floors = Vec::new();
    let (mut walls, mut cpus, mut floor_totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut par_totals = Vec::new();
    let (mut peak_rss, mut peak_anon, mut out_bytes) = (0u64, 0u64, 0u64);
    for run in 0..args.runs {
        let _ = std::fs::remove_dir_all(&out_dir);
        let load = loadavg();
        let started = utc_now();
        let anon_before = status_kb("RssAnon").unwrap_or(0);
        let wchar0 = proc_io("wchar");
        let s0 = proc_stat();
        sampler.reset();
        let clock = PhaseClock::default();
        let t0 = Instant::now();
        let summary = run_merge(&config, Some(&yaml), &out_dir, &options, &clock)
            .expect("the merge succeeds");
        let wall = t0.elapsed().as_secs_f64();
        let s1 = proc_stat();
        let wchar1 = proc_io("wchar");
        let (rss, anon) = sampler.peaks();
        let hwm = status_kb("VmHWM").unwrap_or(0);
        let exec_start = clock
            .start
            .lock()
            .ok()
            .and_then(|s| *s)
            .map(|s| s.duration_since(t0).as_secs_f64());
        let exec_end = clock
            .last
            .lock()
            .ok()
            .and_then(|s| *s)
            .map(|s| s.duration_since(t0).as_secs_f64());
        let outs = safetensors_files(&out_dir);
        let ob: u64 = outs.iter().map(|p| file_size(p)).sum();
        out_bytes = ob;
        let cpu = (s1.user_s - s0.user_s) + (s1.sys_s - s0.sys_s);
        walls.push(wall);
        cpus.push(cpu);
        peak_rss = peak_rss.max(rss);
        peak_anon = peak_anon.max(anon);
        let gbs = (in_bytes + ob) as f64 / wall / 1e9;
        eprintln!(
            "{name} run {}: wall {wall:.2} s, cpu {cpu:.2} s, peak rss {:.0} MiB, anon {:.0} MiB, \
             {gbs:.2} GB/s, load1 {:.2}",
            run + 1,
            rss as f64 / 1024.0,
            anon as f64 / 1024.0,
            load[0]
        );
        runs.push(json!({
            "started_utc": started,
            "load1": load[0],
            "load5": load[1],
            "wall_s": round3(wall),
            "cpu_s": round3(cpu),
            "user_s": round3(s1.user_s - s0.user_s),
            "sys_s": round3(s1.sys_s - s0.sys_s),
            "plan_s": exec_start.map(round3),
            "execute_s": exec_start.zip(exec_end).map(|(s, e)| round3(e - s)),
            "finish_s": exec_end.map(|e| round3(wall - e)),
            "peak_rss_mib": mib(rss),
            "vm_hwm_mib": mib(hwm),
            "peak_anon_mib": mib(anon),
            "anon_before_mib": mib(anon_before),
            "minor_faults": s1.minflt - s0.minflt,
            "major_faults": s1.majflt - s0.majflt,
            "threads_in_process": s1.threads,
            "write_syscall_bytes": wchar0.zip(wchar1).map(|(x, y)| y - x),
            "bytes_read": summary.bytes_read,
            "bytes_written": summary.bytes_written,
            "out_file_bytes": ob,
            "gb_s": round3(gbs),
        }));
        let _ = std::fs::remove_dir_all(&out_dir);

        if args.floor {
            let scratch = out_root.join(format!(".floor-{name}-{}", std::process::id()));
            let t = Instant::now();
            let read = read_all(&inputs, &mut buf);
            let read_s = t.elapsed().as_secs_f64();
            let t = Instant::now();
            write_file(&scratch, ob, &buf);
            let write_s = t.elapsed().as_secs_f64();
            let _ = std::fs::remove_file(&scratch);
            floor_totals.push(read_s + write_s);
            let par_s = parallel_floor(&inputs, &scratch, ob, threads);
            let _ = std::fs::remove_file(&scratch);
            par_totals.push(par_s);
            eprintln!(
                "{name} floor {}: read {read} B in {read_s:.2} s, write {ob} B in {write_s:.2} s; \
                 {threads}-thread read+write {par_s:.2} s",
                run + 1
            );
            floors.push(json!({
                "read_s": round3(read_s),
                "write_s": round3(write_s),
                "total_s": round3(read_s + write_s),
                "read_gb_s": round3(read as f64 / read_s / 1e9),
                "write_gb_s": round3(ob as f64 / write_s / 1e9),
                "parallel_s": round3(par_s),
            }));
        }
    }
    let med_wall = median(&walls);
    let med_floor = median(&floor_totals);
    let med_par = median(&par_totals);
    json!({
        "pair": name,
        "model_a": a.display().to_string(),
        "model_b": b.display().to_string(),
        "config": yaml,
        "rayon_threads": threads,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "in_bytes": in_bytes,
        "out_bytes": out_bytes,
        "median_wall_s": round3(med_wall),
        "median_cpu_s": round3(median(&cpus)),
        "peak_rss_mib": mib(peak_rss),
        "peak_anon_mib": mib(peak_anon),
        "gb_s": round3((in_bytes + out_bytes) as f64 / med_wall / 1e9),
        "runs": runs,
        "floor": if args.floor {
            json!({
                "what": "sequential read of both input files (page cache, 8 MiB buffer) + \
                         write of one file of the output's size to the output filesystem, \
                         one thread, no fsync",
                "parallel_what": "the same bytes read and written concurrently by the merge's \
                                  thread count, 4 MiB positioned reads/writes interleaved, \
                                  output file created at its final length",
                "runs": floors,
                "median_s": round3(med_floor),
                "ratio_merge_over_floor": round3(med_wall / med_floor),
                "parallel_median_s": round3(med_par),
                "ratio_merge_over_parallel_floor": round3(med_wall / med_par),
            })
        } else {
            Value::Null
        },
    })
}
