//! A front for the test's S3 server that fails chosen requests, to prove
//! what valero-db does when part of its storage cannot be reached.

/// The port of the test's S3 server.
pub fn s3_port() -> u16 {
    let endpoint = super::env_or_fail("VALERO_S3_ENDPOINT");
    url::Url::parse(&endpoint).unwrap().port().unwrap()
}

/// An S3 front that passes every request to the real server except those
/// whose request line `refuse` picks, which it answers with
/// `500 InternalError`. One request per connection. Returns its port.
pub fn refusing(upstream: u16, refuse: fn(&str) -> bool) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut client) = conn else { continue };
            std::thread::spawn(move || {
                let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let mut data = Vec::new();
                let mut buf = [0u8; 64 << 10];
                let head_end = loop {
                    if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => data.extend_from_slice(&buf[..k]),
                    }
                };
                let head = String::from_utf8_lossy(&data[..head_end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                while data.len() < head_end + length {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => data.extend_from_slice(&buf[..k]),
                    }
                }
                let request_line = head.lines().next().unwrap_or_default().to_string();
                if refuse(&request_line) {
                    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>We encountered an internal error.</Message></Error>";
                    let _ = write!(
                        client,
                        "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    return;
                }
                // Forward with `Connection: close`, so the server ends the
                // connection after its answer.
                let mut forwarded: String = head
                    .trim_end_matches("\r\n")
                    .split("\r\n")
                    .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
                    .map(|l| format!("{l}\r\n"))
                    .collect();
                forwarded.push_str("Connection: close\r\n\r\n");
                let Ok(mut server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    return;
                };
                let _ = server.write_all(forwarded.as_bytes());
                let _ = server.write_all(&data[head_end..]);
                let _ = std::io::copy(&mut server, &mut client);
            });
        }
    });
    port
}
