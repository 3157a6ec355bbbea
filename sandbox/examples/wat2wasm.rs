//! `wat2wasm <in.wat> <out.wasm>`: the text-to-binary step of `packs/build.sh`,
//! through the `wat` crate (no wabt needed).
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        eprintln!("usage: wat2wasm <in.wat> <out.wasm>");
        return ExitCode::from(2);
    };
    let bytes = match wat::parse_file(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("{input}: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::fs::write(output, &bytes) {
        eprintln!("{output}: {e}");
        return ExitCode::FAILURE;
    }
    println!("{output}: {} bytes", bytes.len());
    ExitCode::SUCCESS
}
