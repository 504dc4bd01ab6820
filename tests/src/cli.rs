//! Running the command line as a real process.

use std::path::Path;
use std::process::{Command, Output};

/// The result of one run, with assertions that print everything on failure.
#[derive(Debug)]
pub struct Run {
    pub args: Vec<String>,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn describe(&self) -> String {
        format!(
            "mergescope {}\nexit: {:?}\n--- stdout\n{}--- stderr\n{}",
            self.args.join(" "),
            self.code(),
            self.stdout(),
            self.stderr()
        )
    }

    pub fn assert_success(&self) -> &Self {
        assert_eq!(
            self.code(),
            Some(0),
            "expected success\n{}",
            self.describe()
        );
        self
    }

    /// Exit code 1 and exactly one line on stderr (`error: ...`) containing every `needle`.
    pub fn assert_user_error(&self, needles: &[&str]) -> String {
        assert_eq!(
            self.code(),
            Some(1),
            "expected exit code 1\n{}",
            self.describe()
        );
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let errors: Vec<&&str> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
        assert_eq!(
            errors.len(),
            1,
            "expected one error line\n{}",
            self.describe()
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("backtrace"),
            "{}",
            self.describe()
        );
        let line = (*errors[0]).to_owned();
        for needle in needles {
            assert!(
                line.contains(needle),
                "error line lacks `{needle}`\n{}",
                self.describe()
            );
        }
        line
    }
}

/// Runs `bin` (pass `env!("CARGO_BIN_EXE_mergescope-cli")`) with `args` in `cwd`.
pub fn run(bin: &str, cwd: &Path, args: &[&str]) -> Run {
    run_with_env(bin, cwd, args, &[])
}

/// [`run`] with extra environment variables.
pub fn run_with_env(bin: &str, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = command(bin, cwd, args);
    let output = command
        .envs(env.iter().copied())
        .output()
        .expect("the mergescope binary runs");
    Run {
        args: args.iter().map(|s| (*s).to_owned()).collect(),
        output,
    }
}

/// The command [`run`] runs, for tests that start it and act while it runs.
pub fn command(bin: &str, cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(bin);
    command
        .args(args)
        .current_dir(cwd)
        .env_remove("RUST_BACKTRACE");
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // Mesa's Vulkan driver complains on stderr without one; the tests read stderr.
        command.env("XDG_RUNTIME_DIR", runtime_dir());
    }
    command
}

/// A private (0700) runtime folder for the child processes of this test binary.
fn runtime_dir() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary folder");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
                .expect("chmod the runtime folder");
        }
        dir
    })
    .path()
}
