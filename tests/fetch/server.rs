//! A loopback HTTP/1.1 server for the fetch tests (std only): each connection is answered by a
//! route function; it serves byte ranges, redirects, cut transfers and hangs, and logs requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum Reply {
    /// A body, honouring `Range: bytes=N-` with a 206.
    File(Vec<u8>),
    Json(String),
    Status(u16),
    Redirect(String),
    /// Announce the whole body but close after `at` bytes.
    Cut(Vec<u8>, usize),
    /// Accept and never answer.
    Hang,
}

type Route = dyn Fn(&Request) -> Reply + Send + Sync;

pub struct Server {
    pub base: String,
    pub log: Arc<Mutex<Vec<Request>>>,
    route: Arc<Mutex<Arc<Route>>>,
}

impl Server {
    pub fn start(route: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let route: Arc<Mutex<Arc<Route>>> = Arc::new(Mutex::new(Arc::new(route)));
        let (l, r) = (log.clone(), route.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (l, r) = (l.clone(), r.lock().unwrap().clone());
                std::thread::spawn(move || serve(stream, &l, &*r));
            }
        });
        Server { base, log, route }
    }

    /// Replaces the route (the "upstream" changes between fetches).
    pub fn set_route(&self, route: impl Fn(&Request) -> Reply + Send + Sync + 'static) {
        *self.route.lock().unwrap() = Arc::new(route);
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(mut stream: TcpStream, log: &Mutex<Vec<Request>>, route: &Route) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let req = Request { path, headers };
        log.lock().unwrap().push(req.clone());
        let head = |status: &str, extra: &str, len: usize| {
            format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\n{extra}\r\n")
        };
        let reply = route(&req);
        let ok = match reply {
            Reply::File(body) => {
                let start = req
                    .header("range")
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok());
                match start {
                    Some(s) if s < body.len() => {
                        let extra = format!(
                            "Content-Range: bytes {s}-{}/{}\r\n",
                            body.len() - 1,
                            body.len()
                        );
                        let mut out =
                            head("206 Partial Content", &extra, body.len() - s).into_bytes();
                        out.extend_from_slice(&body[s..]);
                        stream.write_all(&out)
                    }
                    _ => {
                        let mut out = head("200 OK", "", body.len()).into_bytes();
                        out.extend_from_slice(&body);
                        stream.write_all(&out)
                    }
                }
            }
            Reply::Json(text) => {
                let mut out =
                    head("200 OK", "Content-Type: application/json\r\n", text.len()).into_bytes();
                out.extend_from_slice(text.as_bytes());
                stream.write_all(&out)
            }
            Reply::Status(code) => {
                let out = head(
                    &format!("{code} Error"),
                    "X-Error-Message: from the test server\r\n",
                    0,
                );
                stream.write_all(out.as_bytes())
            }
            Reply::Redirect(to) => {
                let out = head("302 Found", &format!("Location: {to}\r\n"), 0);
                stream.write_all(out.as_bytes())
            }
            Reply::Cut(body, at) => {
                let mut out = head("200 OK", "", body.len()).into_bytes();
                out.extend_from_slice(&body[..at]);
                let _ = stream.write_all(&out);
                let _ = stream.flush();
                return;
            }
            Reply::Hang => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
        };
        if ok.is_err() {
            return;
        }
        let _ = stream.flush();
        // Drain nothing more: requests carry no bodies.
        let _ = reader.get_mut().read(&mut []);
    }
}
