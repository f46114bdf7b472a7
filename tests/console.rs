//! Where the guest console and the logs go: `-serial file,path=`, no `-serial` at all (the UART
//! exists, its output is dropped), and `-D <file>` with the level from `NIMBUS_LOG`.

mod common;

use common::{kvm_usable, replace_arg, run, scratch_dir, Format, VmConfig};

fn without_serial(args: Vec<String>) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == "-serial")
        .expect("-serial is in the arguments");
    let mut args = args;
    args.drain(i..i + 2);
    args
}

#[test]
fn serial_file_backend_receives_the_whole_console() {
    if !kvm_usable() {
        return;
    }
    let path = scratch_dir().join("console-file.txt");
    let _ = std::fs::remove_file(&path);
    let args = VmConfig::new(Format::Elf, 128, "to-file").args();
    let out = run(&replace_arg(
        args,
        "-serial",
        &format!("file,path={}", path.display()),
    ));

    out.assert_exit_code(0);
    assert_eq!(
        out.stdout,
        "",
        "console output leaked to stdout\n{}",
        out.describe()
    );
    let console = std::fs::read_to_string(&path).expect("the console file exists");
    let lines: Vec<&str> = console.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&"NIMBUS-GUEST hello format=elf"),
        "{console}"
    );
    assert!(lines.contains(&"cmdline: to-file"), "{console}");
    assert_eq!(lines.last(), Some(&"NIMBUS-GUEST done"), "{console}");
}

#[test]
fn without_serial_the_guest_runs_and_its_output_is_dropped() {
    if !kvm_usable() {
        return;
    }
    let out = run(&without_serial(
        VmConfig::new(Format::Elf, 128, "quiet").args(),
    ));

    out.assert_exit_code(0);
    assert_eq!(out.stdout, "", "{}", out.describe());
}

#[test]
fn log_file_gets_timestamped_lines_at_the_level_asked() {
    if !kvm_usable() {
        return;
    }
    let log = scratch_dir().join("nimbus-log.txt");
    let _ = std::fs::remove_file(&log);
    let mut args = VmConfig::new(Format::Elf, 128, "nimbus.test=triple").args();
    args.extend([
        "-D".to_string(),
        log.display().to_string(),
        "-name".into(),
        "vm-under-test".into(),
    ]);
    std::env::set_var("NIMBUS_LOG", "info");
    let out = run(&args);

    out.assert_exit_code(0);
    assert_eq!(
        out.stderr,
        "",
        "logs went to stderr instead of the file\n{}",
        out.describe()
    );
    let text = std::fs::read_to_string(&log).expect("the log file exists");
    assert!(text.contains("starting VM vm-under-test"), "{text}");
    let triple = text
        .lines()
        .find(|l| l.contains("triple fault"))
        .expect("a triple-fault line");
    // `[<secs>.<micros> <LEVEL> <thread>] message`
    let stamp = triple
        .trim_start_matches('[')
        .split_whitespace()
        .next()
        .unwrap_or("");
    let (secs, micros) = stamp
        .split_once('.')
        .expect("a timestamp with microseconds");
    assert!(secs.parse::<u64>().is_ok() && micros.len() == 6, "{triple}");
    assert!(triple.contains("WARN"), "{triple}");
}
