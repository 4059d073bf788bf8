//! Build script: only for `scripts/build-cuda.sh`. A `cuda` build links against the NVIDIA
//! driver and CUDA libraries; on a machine without them, the script builds stand-ins with the
//! real sonames and names their folder in `MVC_CUDA_LINK_STUBS`. They are passed to the links
//! of this package's binaries, tests and benches only (never to dependencies or build
//! scripts), with unresolved symbols allowed: the real libraries provide them at run time.

fn main() {
    println!("cargo:rerun-if-env-changed=MVC_CUDA_LINK_STUBS");
    if let Ok(dir) = std::env::var("MVC_CUDA_LINK_STUBS")
        && !dir.is_empty()
    {
        println!("cargo:rustc-link-search=native={dir}");
        // As files after --no-as-needed: the linker's -l flags come under --as-needed, which
        // would drop libraries that (being empty) resolve nothing, and with them the NEEDED
        // entries the real libraries are found by.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        let mut stubs: Vec<_> = std::fs::read_dir(&dir)
            .expect("MVC_CUDA_LINK_STUBS names a folder")
            .map(|e| e.expect("readable folder").path())
            .filter(|p| p.extension().is_some_and(|e| e == "so"))
            .collect();
        stubs.sort();
        for stub in stubs {
            println!("cargo:rustc-link-arg={}", stub.display());
        }
        println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-in-object-files");
    }
}
