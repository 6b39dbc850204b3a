// Compiles the admin API protobufs with the protoc shipped inside the
// protoc-bin-vendored crate, so a build needs no system protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    let well_known = protoc_bin_vendored::include_path()?;
    tonic_prost_build::configure().compile_protos(
        &[std::path::PathBuf::from(
            "proto/meshscale/v1/meshscale.proto",
        )],
        &[std::path::PathBuf::from("proto"), well_known],
    )?;
    Ok(())
}
