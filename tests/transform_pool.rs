//! The pooling allocator's fixed limits keep the address space the engine
//! reserves bounded (it is virtual, but a 4 GiB-per-slot default would reserve
//! terabytes), and still allow many instances.

use fxbridge::config::PluginsConfig;
use fxbridge::transform::{PluginHost, MAX_MEMORY, POOL};

fn vm_size_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize")
}

#[test]
fn one_host_reserves_a_bounded_address_space() {
    let before = vm_size_kib();
    let dir = tempfile::tempdir().unwrap();
    let host = PluginHost::new(&PluginsConfig {
        cache_dir: Some(dir.path().to_path_buf()),
        ..PluginsConfig::default()
    })
    .unwrap();
    let reserved_gib = (vm_size_kib() - before) as f64 / (1024.0 * 1024.0);
    println!(
        "one PluginHost reserves {reserved_gib:.1} GiB of address space \
         ({} memories of at most {} MiB)",
        POOL.memories,
        MAX_MEMORY >> 20
    );
    assert!(reserved_gib < 400.0, "{reserved_gib:.1} GiB reserved");
    drop(host);
}
