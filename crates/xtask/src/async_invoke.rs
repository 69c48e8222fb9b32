//! A Lambda Invoke endpoint that answers every invocation as AWS answers an
//! asynchronous one (202, at once) and passes the function's name and payload on, for
//! code that drives master without Lambda: the benchmark and the handler tests.

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;

/// One accepted invocation: the function named in the request path, and the payload
/// (`Null` if it is not JSON).
pub type Invocation = (String, Value);

/// Starts the endpoint on a free loopback port; returns its URL.
pub async fn start(sink: UnboundedSender<Invocation>) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, sink.clone()));
        }
    });
    Ok(url)
}

/// Serves one keep-alive connection, which carries many requests.
async fn serve(socket: TcpStream, sink: UnboundedSender<Invocation>) -> Option<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.ok()? == 0 {
            return None;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).await.ok()? == 0 {
                return None;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().ok()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await.ok()?;
        // POST /2015-03-31/functions/{name or URL-encoded ARN}/invocations
        let function = request_line
            .split('/')
            .nth(3)
            .map(|f| {
                percent_encoding::percent_decode_str(f)
                    .decode_utf8_lossy()
                    .to_string()
            })
            .unwrap_or_default();
        let payload = serde_json::from_slice(&body).unwrap_or(Value::Null);
        sink.send((function, payload)).ok()?;
        write
            .write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
            .await
            .ok()?;
    }
}
