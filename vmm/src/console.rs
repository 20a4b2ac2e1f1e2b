//! The host side of the guest console: raw terminal mode and the stdin reader.
//!
//! When stdin is a terminal it is put in raw mode, so keys (Ctrl-C included) go to the
//! guest. The escape key is Ctrl-A: `Ctrl-A x` quits Aperture, `Ctrl-A p` presses the guest's
//! power key, `Ctrl-A Ctrl-A` sends one Ctrl-A to the guest, `Ctrl-A h` prints help. The terminal is restored on every exit path:
//! normal return, error, signal and panic.

use std::io::Read;
use std::sync::Mutex;

use log::{debug, warn};

/// Ctrl-A.
const ESCAPE: u8 = 0x01;

/// What the escape parser makes of the input.
#[derive(Debug, PartialEq, Eq)]
pub enum ConsoleInput {
    /// Bytes for the guest.
    Guest(Vec<u8>),
    /// The user asked to quit.
    Quit,
    /// The user asked for help.
    Help,
    /// The user asked to press the guest's power key.
    PowerKey,
}

/// Splits terminal input into guest bytes and escape commands.
#[derive(Debug, Default)]
pub struct EscapeParser {
    after_escape: bool,
}

impl EscapeParser {
    /// Parses one chunk of input.
    pub fn feed(&mut self, input: &[u8]) -> Vec<ConsoleInput> {
        let mut out = Vec::new();
        let mut guest = Vec::new();
        for &byte in input {
            if !self.after_escape {
                if byte == ESCAPE {
                    self.after_escape = true;
                } else {
                    guest.push(byte);
                }
                continue;
            }
            self.after_escape = false;
            match byte {
                b'x' | b'X' => {
                    if !guest.is_empty() {
                        out.push(ConsoleInput::Guest(std::mem::take(&mut guest)));
                    }
                    out.push(ConsoleInput::Quit);
                    return out;
                }
                b'h' | b'H' | b'?' | b'p' | b'P' => {
                    if !guest.is_empty() {
                        out.push(ConsoleInput::Guest(std::mem::take(&mut guest)));
                    }
                    let power = matches!(byte, b'p' | b'P');
                    out.push(if power { ConsoleInput::PowerKey } else { ConsoleInput::Help });
                }
                ESCAPE => guest.push(ESCAPE),
                other => guest.extend_from_slice(&[ESCAPE, other]),
            }
        }
        if !guest.is_empty() {
            out.push(ConsoleInput::Guest(guest));
        }
        out
    }
}

/// Help for the escape key, printed on `Ctrl-A h`.
pub const ESCAPE_HELP: &str =
    "\r\n[aperture] Ctrl-A x: quit   Ctrl-A p: power key (clean shutdown)   Ctrl-A Ctrl-A: send \
     Ctrl-A   Ctrl-A h: this help\r\n";

/// The terminal settings to put back, for the panic hook and signal paths.
static SAVED_TERMIOS: Mutex<Option<(libc::c_int, libc::termios)>> = Mutex::new(None);

/// Whether fd 0 is a terminal.
pub fn stdin_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 }
}

/// Puts the terminal back as it was, if Aperture changed it. Safe to call more than once.
pub fn restore_terminal() {
    let saved = SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, termios)) = saved {
        // SAFETY: `termios` is a value read by tcgetattr from the same descriptor.
        let rc = unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) };
        if rc != 0 {
            warn!("could not restore the terminal: {}", std::io::Error::last_os_error());
        }
    }
}

/// [`restore_terminal`] for a signal handler (the seccomp `SIGSYS` handler): never waits for
/// the lock (skips when another thread holds it), allocates nothing and logs nothing.
pub fn restore_terminal_from_signal_handler() {
    let mut saved = match SAVED_TERMIOS.try_lock() {
        Ok(saved) => saved,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Some((fd, termios)) = saved.take() {
        // SAFETY: `termios` is a value read by tcgetattr from the same descriptor;
        // tcsetattr is async-signal-safe.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) };
    }
}

/// Raw mode for the life of the guard.
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Switches stdin to raw mode (keys go to the guest) and installs a panic hook that
    /// restores it. Returns None when stdin is not a terminal.
    pub fn enable() -> Option<Self> {
        if !stdin_is_tty() {
            return None;
        }
        Self::enable_on(libc::STDIN_FILENO)
    }

    /// Raw mode on terminal `fd` (stdin, or a pseudo-terminal in tests).
    fn enable_on(fd: libc::c_int) -> Option<Self> {
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut termios: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd 0 is a terminal and `termios` is a valid out pointer.
        if unsafe { libc::tcgetattr(fd, &mut termios) } != 0 {
            warn!("stdin is a terminal but tcgetattr failed; leaving it in cooked mode");
            return None;
        }
        *SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()) = Some((fd, termios));
        let mut raw = termios;
        // Raw input, but keep output post-processing so host log lines still start a new line.
        raw.c_iflag &= !(libc::IGNBRK
            | libc::BRKINT
            | libc::PARMRK
            | libc::ISTRIP
            | libc::INLCR
            | libc::IGNCR
            | libc::ICRNL
            | libc::IXON);
        raw.c_lflag &= !(libc::ECHO | libc::ECHONL | libc::ICANON | libc::ISIG | libc::IEXTEN);
        raw.c_cflag &= !(libc::CSIZE | libc::PARENB);
        raw.c_cflag |= libc::CS8;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        // SAFETY: `raw` is a valid termios derived from the current settings.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            warn!("could not switch the terminal to raw mode: {}", std::io::Error::last_os_error());
            SAVED_TERMIOS.lock().unwrap_or_else(|e| e.into_inner()).take();
            return None;
        }
        let previous_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous_hook(info);
        }));
        debug!("terminal in raw mode; Ctrl-A x quits");
        Some(Self(()))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Reads host stdin on its own thread and hands it to `deliver`; escape sequences are
/// interpreted only when stdin is a terminal. `on_start` runs first on the thread (the VMM
/// confines it there). The thread ends at EOF; it is not joined (a blocked read cannot be
/// interrupted portably), which is fine as it owns nothing.
pub fn spawn_stdin_reader(
    interactive: bool,
    on_start: impl FnOnce() + Send + 'static,
    deliver: impl Fn(&[u8]) + Send + 'static,
    on_quit: impl Fn() + Send + 'static,
    on_power_key: impl Fn() + Send + 'static,
) -> std::io::Result<()> {
    devices::thread::named("stdin").spawn(move || {
        on_start();
        let mut stdin = std::io::stdin().lock();
        let mut parser = EscapeParser::default();
        let mut buf = [0u8; 256];
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => {
                    debug!("stdin closed");
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    debug!("stdin read failed: {e}");
                    return;
                }
            };
            if !interactive {
                deliver(&buf[..n]);
                continue;
            }
            for event in parser.feed(&buf[..n]) {
                match event {
                    ConsoleInput::Guest(bytes) => deliver(&bytes),
                    ConsoleInput::Help => {
                        use std::io::Write;
                        let mut err = std::io::stderr();
                        let _ = err.write_all(ESCAPE_HELP.as_bytes());
                    }
                    ConsoleInput::Quit => {
                        on_quit();
                        return;
                    }
                    ConsoleInput::PowerKey => on_power_key(),
                }
            }
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn termios_of(fd: libc::c_int) -> libc::termios {
        // SAFETY: plain data filled by tcgetattr on a valid terminal fd.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            assert_eq!(libc::tcgetattr(fd, &mut t), 0);
            t
        }
    }

    #[test]
    fn raw_mode_is_entered_and_restored_on_drop_and_on_explicit_restore() {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills two fds; the other pointers may be null.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0);
        let cooked = termios_of(slave);
        assert_ne!(cooked.c_lflag & libc::ICANON, 0);
        let guard = RawTerminal::enable_on(slave).unwrap();
        let raw = termios_of(slave);
        assert_eq!(raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG), 0);
        drop(guard);
        assert_eq!(termios_of(slave).c_lflag, cooked.c_lflag);
        // The panic-hook/signal path: restore without the guard, twice is harmless.
        let guard = RawTerminal::enable_on(slave).unwrap();
        restore_terminal();
        restore_terminal();
        assert_eq!(termios_of(slave).c_lflag, cooked.c_lflag);
        std::mem::forget(guard);
        // SAFETY: closing the fds openpty gave us.
        unsafe {
            libc::close(master);
            libc::close(slave);
        }
    }

    #[test]
    fn plain_bytes_pass_through() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"ls\r"), vec![ConsoleInput::Guest(b"ls\r".to_vec())]);
        assert_eq!(p.feed(b""), vec![]);
    }

    #[test]
    fn ctrl_a_x_quits_after_flushing_earlier_bytes() {
        let mut p = EscapeParser::default();
        assert_eq!(
            p.feed(b"ab\x01xcd"),
            vec![ConsoleInput::Guest(b"ab".to_vec()), ConsoleInput::Quit]
        );
    }

    #[test]
    fn escape_split_across_reads() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"a\x01"), vec![ConsoleInput::Guest(b"a".to_vec())]);
        assert_eq!(p.feed(b"x"), vec![ConsoleInput::Quit]);
    }

    #[test]
    fn double_escape_sends_one_and_unknown_sends_both() {
        let mut p = EscapeParser::default();
        assert_eq!(p.feed(b"\x01\x01"), vec![ConsoleInput::Guest(vec![1])]);
        assert_eq!(p.feed(b"\x01q"), vec![ConsoleInput::Guest(vec![1, b'q'])]);
        assert_eq!(p.feed(b"\x01h"), vec![ConsoleInput::Help]);
        assert_eq!(
            p.feed(b"a\x01pb"),
            vec![
                ConsoleInput::Guest(b"a".to_vec()),
                ConsoleInput::PowerKey,
                ConsoleInput::Guest(b"b".to_vec())
            ]
        );
    }
}
