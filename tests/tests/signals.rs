//! Ctrl-C (SIGINT) and SIGTERM sent to the workbench launched from a terminal: the real binary
//! in a real window (Xvfb and Mesa's software renderer) closes cleanly with exit code 130.
//! Where Xvfb is not installed the test says so and checks nothing; `.ci/run` installs it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mergescope_core::dtype::Dtype;
use mergescope_tests::fixture::{llama_tensors, write_model_folder};

const BIN: &str = env!("CARGO_BIN_EXE_mergescope-cli");

/// An X server on a display of its own, stopped on drop.
struct Display {
    server: Child,
    number: u32,
}

impl Display {
    fn start(number: u32) -> Option<Self> {
        let server = Command::new("Xvfb")
            .args([
                &format!(":{number}"),
                "-screen",
                "0",
                "1280x800x24",
                "-nolisten",
                "tcp",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let socket = format!("/tmp/.X11-unix/X{number}");
        let started = Instant::now();
        while !Path::new(&socket).exists() {
            if started.elapsed() > Duration::from_secs(20) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { server, number })
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Sends `signal` to the workbench on `display` after it has been up a while, and returns its
/// exit code and what it printed on stderr.
fn interrupt_workbench(display: &Display, dir: &Path, signal: &str) -> (Option<i32>, String) {
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let mut app = Command::new(BIN)
        .args(["base", "ft"])
        .current_dir(dir)
        .env("DISPLAY", format!(":{}", display.number))
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("MERGESCOPE_CACHE_DIR", dir.join("cache"))
        .env("HOME", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Long enough for the window to be up and the family opening (software rendering).
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        app.try_wait().unwrap().is_none(),
        "the workbench ended before the signal"
    );
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &app.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = app.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = app.kill();
            panic!("the workbench did not close within 30 s of SIG{signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut app.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code(), stderr)
}

#[test]
fn ctrl_c_and_sigterm_close_the_workbench_cleanly() {
    if Command::new("Xvfb").arg("-help").output().is_err() {
        eprintln!("skipped: Xvfb is not installed (apt-get install xvfb)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_model_folder(
        &dir.path().join("base"),
        &llama_tensors(2, 0),
        Dtype::F32,
        2,
    );
    write_model_folder(&dir.path().join("ft"), &llama_tensors(2, 1), Dtype::F32, 2);
    let display = (90..99)
        .find_map(|n| {
            (!Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
                .then(|| Display::start(n))
                .flatten()
        })
        .expect("a free X display");
    for signal in ["INT", "TERM"] {
        let (code, stderr) = interrupt_workbench(&display, dir.path(), signal);
        assert_eq!(code, Some(130), "SIG{signal}: exit code\n{stderr}");
        assert!(
            stderr.contains("interrupted; closing the workbench"),
            "SIG{signal}\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "SIG{signal}\n{stderr}");
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("mergescope-partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
