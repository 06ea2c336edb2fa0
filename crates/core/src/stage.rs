//! The steps of starting a new process, named once: the new process reports the one that
//! failed between `fork` and `exec` as a number over its error pipe (`spawn.rs`), and
//! [`Error::Spawn`](crate::Error::Spawn) carries it to the caller, whose message names it in
//! the same words as ever (`cannot start /srv/app: execve failed: …`).

use std::fmt;

/// The step of starting a new process that failed, in [`Error::Spawn`](crate::Error::Spawn).
///
/// The steps in the new process, between `fork` and `exec`, travel to the parent as a number
/// over the error pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u32)]
pub enum SpawnStage {
    /// Turning the command into C strings (an argument or variable with a NUL byte).
    Prepare,
    /// Creating the pipe on which the new process reports a failure before exec.
    ErrorPipe,
    /// `fork`.
    Fork,
    /// Reading the new process's report from that pipe.
    ReadErrorPipe,
    /// In the new process: moving the handed-over descriptors above their target range.
    MoveDescriptors,
    /// In the new process: placing them at fd 3 onward (and the standard streams).
    PlaceDescriptors,
    /// In the new process: closing every other descriptor.
    CloseDescriptors,
    /// In the new process: changing to the working directory.
    Chdir,
    /// In the new process: `execve`, which names a missing or non-executable program.
    Execve,
    /// In the new process: leading a process group of its own.
    Setpgid,
}

impl SpawnStage {
    /// The steps taken in the new process, whose codes cross the error pipe.
    pub(crate) const IN_CHILD: [SpawnStage; 6] = [
        SpawnStage::MoveDescriptors,
        SpawnStage::PlaceDescriptors,
        SpawnStage::CloseDescriptors,
        SpawnStage::Chdir,
        SpawnStage::Execve,
        SpawnStage::Setpgid,
    ];

    /// The step's number on the error pipe. Plain arithmetic: safe between fork and exec.
    pub(crate) const fn code(self) -> u32 {
        self as u32
    }

    pub(crate) fn from_code(code: u32) -> Option<SpawnStage> {
        SpawnStage::IN_CHILD
            .into_iter()
            .find(|stage| stage.code() == code)
    }
}

impl fmt::Display for SpawnStage {
    /// What the step does, in the words of the error message: `execve failed: …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SpawnStage::Prepare => "preparing the command",
            SpawnStage::ErrorPipe => "creating the error pipe",
            SpawnStage::Fork => "fork",
            SpawnStage::ReadErrorPipe => "reading the error pipe",
            SpawnStage::MoveDescriptors => "moving descriptors",
            SpawnStage::PlaceDescriptors => "placing descriptors",
            SpawnStage::CloseDescriptors => "closing other descriptors",
            SpawnStage::Chdir => "chdir",
            SpawnStage::Execve => "execve",
            SpawnStage::Setpgid => "setpgid",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_in_the_child_crosses_the_pipe() {
        for stage in SpawnStage::IN_CHILD {
            assert_eq!(SpawnStage::from_code(stage.code()), Some(stage));
        }
        assert_eq!(SpawnStage::from_code(SpawnStage::Fork.code()), None);
        assert_eq!(SpawnStage::Execve.to_string(), "execve");
    }
}
