//! The `valero-db` binary: parse arguments, set up logging, run, exit with
//! the contract's code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = match valero_db::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return valero_db::output::argument_error(e),
    };
    valero_db::output::init_logging(cli.global.verbose, cli.global.quiet, cli.global.log_format);
    valero_db::progress::init(cli.global.no_progress, cli.global.quiet);
    let format = cli.global.output;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let outcome = runtime.block_on(valero_db::run(cli));
    let code = valero_db::output::emit(&outcome, format);
    // Do not wait for background tasks (lease renewal) to wind down.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    std::process::ExitCode::from(code)
}
