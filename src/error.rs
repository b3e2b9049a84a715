//! One error type for whatever stops sheepdog before its loop runs, with the
//! cause chain that led to it, and the class that decides the exit code.
//! The mapping from class to code is here and nowhere else.

use std::error::Error as StdError;
use std::fmt;

use nix::errno::Errno;

/// What kind of failure, and so which exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitClass {
    /// Bad command-line usage (clap exits with it itself).
    Usage,
    /// The system refused what sheepdog needs to run: out of fds or memory
    /// (EX_OSERR).
    Os,
    /// Bad configuration or environment; nothing was started (EX_CONFIG).
    Config,
}

impl ExitClass {
    pub fn code(self) -> u8 {
        match self {
            ExitClass::Usage => 2,
            ExitClass::Os => 71,
            ExitClass::Config => 78,
        }
    }
}

#[derive(Debug)]
pub struct Error {
    class: ExitClass,
    message: String,
    cause: Option<Box<dyn StdError + Send + Sync>>,
}

impl Error {
    /// A bad config, command line or environment.
    pub fn config(message: impl Into<String>) -> Error {
        Error {
            class: ExitClass::Config,
            message: message.into(),
            cause: None,
        }
    }

    /// The system would not give sheepdog what it needs.
    pub fn os(message: impl Into<String>) -> Error {
        Error {
            class: ExitClass::Os,
            message: message.into(),
            cause: None,
        }
    }

    /// A system call failed while setting up: the system's own shortage
    /// (fds, memory, processes) is an OS error, anything else the setup's.
    pub fn from_errno(message: impl Into<String>, errno: Errno) -> Error {
        Error {
            class: class_of(errno),
            message: message.into(),
            cause: Some(Box::new(SystemError(errno))),
        }
    }

    /// Like [`Error::from_errno`], for the standard library's errors.
    pub fn from_io(message: impl Into<String>, error: std::io::Error) -> Error {
        let class = error
            .raw_os_error()
            .map_or(ExitClass::Config, |raw| class_of(Errno::from_raw(raw)));
        Error {
            class,
            message: message.into(),
            cause: Some(Box::new(error)),
        }
    }

    pub fn class(&self) -> ExitClass {
        self.class
    }

    pub fn exit_code(&self) -> u8 {
        self.class.code()
    }
}

fn class_of(errno: Errno) -> ExitClass {
    match errno {
        Errno::EMFILE | Errno::ENFILE | Errno::ENOMEM | Errno::ENOBUFS | Errno::EAGAIN => ExitClass::Os,
        _ => ExitClass::Config,
    }
}

/// `message: cause` (a cause of ours tells its own cause in turn).
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.message)?;
        match &self.cause {
            Some(cause) => write!(f, ": {cause}"),
            None => Ok(()),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn StdError + 'static))
    }
}

/// An errno, worded as the system words it ("Too many open files").
#[derive(Debug)]
struct SystemError(Errno);

impl fmt::Display for SystemError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.desc())
    }
}

impl StdError for SystemError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_has_its_exit_code() {
        assert_eq!(ExitClass::Usage.code(), 2);
        assert_eq!(ExitClass::Os.code(), 71);
        assert_eq!(ExitClass::Config.code(), 78);
    }

    #[test]
    fn a_shortage_of_the_system_is_an_os_error_anything_else_the_setups() {
        let error = Error::from_errno("cannot bind 127.0.0.1:80", Errno::EADDRINUSE);
        assert_eq!(error.exit_code(), 78);
        assert_eq!(error.to_string(), "cannot bind 127.0.0.1:80: Address already in use");
        for errno in [Errno::EMFILE, Errno::ENFILE, Errno::ENOMEM] {
            assert_eq!(Error::from_errno("x", errno).exit_code(), 71, "{errno}");
        }
        let io = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(Error::from_io("cannot read", io).class(), ExitClass::Os);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let error = Error::from_io("cannot read app.toml", io);
        assert_eq!(
            (error.exit_code(), error.to_string()),
            (78, "cannot read app.toml: gone".into())
        );
    }

    #[test]
    fn the_chain_is_told_in_order() {
        let inner = Error::from_errno("inner", Errno::ENOENT);
        let outer = Error {
            class: ExitClass::Config,
            message: "outer".into(),
            cause: Some(Box::new(inner)),
        };
        assert_eq!(outer.to_string(), "outer: inner: No such file or directory");
    }
}
