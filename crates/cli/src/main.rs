//! The `truthgpt` binary. Library crates return errors; only this crate prints them.

mod args;
mod bench;
mod bench_crypt;
mod bench_decode;
mod bench_gemm;
mod bench_kernels;
mod bench_qmatmul;
mod bench_resilience;
mod bench_serve;
mod config_cmd;
mod data_cmd;
mod device_cmd;
mod finetune_cmd;
mod interop_cmd;
mod progress;
mod prune_cmd;
mod quantize_cmd;
mod quickstart;
mod registry_cmd;
mod run_cmd;
mod security_cmd;
mod serve_cmd;

use std::process::ExitCode;

use clap::Parser;

use crate::args::{
    BenchCommand, Cli, Command, ConfigCommand, DataCommand, ExportCommand, ImportCommand, TokenizerCommand,
};

/// The exit status of a check that ran and found a problem (`audit verify`), apart from errors (2).
const CHECK_FAILED: u8 = 1;

fn main() -> ExitCode {
    // clap prints usage errors and exits 2 itself; `--help` and `--version` exit 0.
    let cli = Cli::parse();
    match try_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(CHECK_FAILED),
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once. Our errors' messages already include the cause they
/// wrap (`path: No space left on device`), which anyhow's `{:#}` would print again after them.
fn report(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if line.contains(&cause) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&cause);
    }
    line
}

/// `Ok(false)`: a check ran and failed.
fn try_main(cli: Cli) -> anyhow::Result<bool> {
    if let Command::Audit(cmd) = &cli.command {
        return security_cmd::audit_cmd(cmd);
    }
    run(cli).map(|()| true)
}

fn run(mut cli: Cli) -> anyhow::Result<()> {
    resolve_model_args(&mut cli.command)?;
    match cli.command {
        Command::Config(ConfigCommand::Validate { file }) => config_cmd::validate(&file),
        Command::Config(ConfigCommand::Show { file, layers }) => config_cmd::show(file.as_deref(), &layers),
        Command::Bench(BenchCommand::Train(args)) => bench::train(&args),
        Command::Bench(BenchCommand::Moe(args)) => bench::moe(&args),
        Command::Bench(BenchCommand::Generate(args)) => bench::generate(&args),
        Command::Bench(BenchCommand::Load(args)) => bench::load(&args),
        Command::Bench(BenchCommand::Serve(args)) => bench_serve::run(&args),
        Command::Bench(BenchCommand::Kernels(args)) => bench_kernels::run(&args),
        Command::Bench(BenchCommand::Skinny(args)) => bench::skinny(&args),
        Command::Bench(BenchCommand::Gemm(args)) => bench_gemm::run(&args),
        Command::Bench(BenchCommand::Qmatmul(args)) => bench_qmatmul::run(&args),
        Command::Bench(BenchCommand::Decode(args)) => bench_decode::run(&args),
        Command::Quickstart(args) => quickstart::run(&args),
        Command::Tokenizer(TokenizerCommand::Train { data, vocab_size, out, jsonl_field }) => {
            data_cmd::train_tokenizer(&data, vocab_size, &out, &jsonl_field)
        }
        Command::Data(DataCommand::Prepare(args)) => data_cmd::prepare(&args),
        Command::Train(args) => run_cmd::train(&args),
        Command::Finetune(args) => finetune_cmd::run(&args),
        Command::Distill(args) => finetune_cmd::distill(&args),
        Command::Generate(args) => run_cmd::generate(&args),
        Command::Eval(args) => run_cmd::eval(&args),
        Command::Plot(args) => run_cmd::plot(&args),
        Command::Import(ImportCommand::Hf { dir, out }) => interop_cmd::import_hf(&dir, &out),
        Command::Export(ExportCommand::Hf { model, out }) => interop_cmd::export_hf(&model, &out),
        Command::Export(ExportCommand::Peft { model, out, base }) => {
            interop_cmd::export_peft(&model, &out, base.as_deref())
        }
        Command::Export(ExportCommand::Gguf { model, out, dtype }) => {
            interop_cmd::export_gguf(&model, &out, dtype)
        }
        Command::Quantize(args) => quantize_cmd::run(&args),
        Command::Prune(args) => prune_cmd::run(&args),
        Command::Logits(args) => interop_cmd::logits(&args),
        Command::Serve(args) => serve_cmd::serve(&args),
        Command::Device(args) => device_cmd::run(&args),
        Command::Registry(args) => registry_cmd::run(&args),
        Command::Bench(BenchCommand::Crypt(args)) => bench_crypt::run(&args),
        Command::Keys(cmd) => security_cmd::keys(&cmd),
        Command::Encrypt(args) => security_cmd::encrypt(&args),
        Command::Decrypt(args) => security_cmd::decrypt(&args),
        Command::Audit(cmd) => security_cmd::audit_cmd(&cmd).and_then(|ok| {
            anyhow::ensure!(ok, "the audit log was changed");
            Ok(())
        }),
    }
}

/// Replaces each `--model registry:…` with the local directory it resolves to, before any
/// command runs. `serve` resolves its own (the model can also come from its YAML).
fn resolve_model_args(command: &mut Command) -> anyhow::Result<()> {
    let model = match command {
        Command::Generate(args) => &mut args.model,
        Command::Eval(args) => &mut args.model,
        Command::Logits(args) => &mut args.model,
        Command::Quantize(args) => &mut args.model,
        Command::Prune(args) => &mut args.model,
        Command::Export(
            ExportCommand::Hf { model, .. }
            | ExportCommand::Gguf { model, .. }
            | ExportCommand::Peft { model, .. },
        ) => model,
        Command::Bench(BenchCommand::Serve(args)) => &mut args.model,
        _ => return Ok(()),
    };
    *model = registry_cmd::resolve_model(model)?;
    Ok(())
}
