//! A loopback upload-callback server for tests: what `serve` POSTs after an upload with x-oss-callback.

/// A loopback callback server: answers every POST with `{"Status":"OK","n":N}` and keeps what it got.
pub struct CallbackServer {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
}

impl CallbackServer {
    pub fn start() -> CallbackServer {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the callback server");
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("clone the callback stream"));
                let (mut head, mut len) = (String::new(), 0usize);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; len];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let n = {
                    let mut all = seen.lock().unwrap();
                    all.push((head, String::from_utf8_lossy(&body).into_owned()));
                    all.len()
                };
                let answer = format!(r#"{{"Status":"OK","n":{n}}}"#);
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        CallbackServer { url, received }
    }

    /// The bodies of the callbacks received, in order.
    pub fn bodies(&self) -> Vec<String> {
        self.received.lock().unwrap().iter().map(|(_, b)| b.clone()).collect()
    }
}
