//! A local SMTP server standing in for a mail relay: it speaks enough of RFC 5321 for an SMTP
//! client (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT, no AUTH, no STARTTLS), captures every
//! message exactly as it arrived (dot-unstuffed), and answers the end of each message's data
//! from a script: `451` makes the client try again later, `550` refuses for good. With the
//! script empty it accepts (`250`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One message's envelope and data, and what the server answered to it.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// The message as sent: headers, blank line, body, CRLF line ends.
    pub data: String,
    /// The answer's code: 250 accepted, anything else refused.
    pub code: u16,
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    script: Arc<Mutex<VecDeque<(u16, String)>>>,
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SmtpServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Shared::default();
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, s.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// Answers the next messages' data with these replies, in order (e.g. `(451, "4.3.0 try
    /// again later")`), then `250` again.
    pub fn script(&self, replies: &[(u16, &str)]) {
        self.shared
            .script
            .lock()
            .unwrap()
            .extend(replies.iter().map(|(c, t)| (*c, (*t).to_owned())));
    }

    /// Every message received, accepted or refused, in order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The messages accepted (answered 250).
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.code == 250)
            .collect()
    }
}

async fn session(stream: TcpStream, shared: Shared) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    if write
        .write_all(b"220 smtp.test ESMTP stand-in\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut mail_from = String::new();
    let mut rcpt_to = Vec::new();
    loop {
        let mut line = String::new();
        match lines.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let command = line.trim_end().to_owned();
        let upper = command.to_ascii_uppercase();
        let answer: String = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            "250 smtp.test\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = address(&command["MAIL FROM:".len()..]);
            rcpt_to.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            rcpt_to.push(address(&command["RCPT TO:".len()..]));
            "250 2.1.5 ok\r\n".into()
        } else if upper == "DATA" {
            if write
                .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            loop {
                let mut l = String::new();
                match lines.read_line(&mut l).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if l == ".\r\n" {
                    break;
                }
                // RFC 5321 4.5.2: a leading dot was doubled by the client.
                data.push_str(
                    l.strip_prefix('.')
                        .filter(|_| l.starts_with(".."))
                        .unwrap_or(&l),
                );
            }
            let (code, text) = shared
                .script
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or((250, "2.0.0 queued".into()));
            shared.received.lock().unwrap().push(Received {
                mail_from: mail_from.clone(),
                rcpt_to: rcpt_to.clone(),
                data,
                code,
            });
            format!("{code} {text}\r\n")
        } else if upper == "RSET" {
            mail_from.clear();
            rcpt_to.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper == "NOOP" {
            "250 2.0.0 ok\r\n".into()
        } else if upper == "QUIT" {
            let _ = write.write_all(b"221 2.0.0 bye\r\n").await;
            return;
        } else {
            "502 5.5.2 command not implemented\r\n".into()
        };
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// `<a@b>` (and any ` SIZE=…` parameters after it) → `a@b`.
fn address(arg: &str) -> String {
    let arg = arg.trim();
    let end = arg.find('>').map(|i| i + 1).unwrap_or(arg.len());
    arg[..end]
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}
