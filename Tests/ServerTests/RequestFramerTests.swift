import Server
import Testing

@testable import Serving

/// The fast lane's request framer from a table of requests, as llhttp's request tests are: each
/// input frames to a head (what the lane may answer from), waits for more bytes, or falls back to
/// NIO's parser for the rest of the connection. The live socket tests stay the end-to-end check.
struct RequestFramerTests {
    /// What a row expects: a framed head summarised, or one of the two other outcomes.
    enum Expected: Equatable, CustomStringConvertible {
        case incomplete
        case unframed
        /// Method ("GET", "HEAD" or "other"), target, head length, Content-Length, keep-alive,
        /// whether an `Authorization` was seen, and the `If-None-Match` value.
        case request(String, String, Int, Int, Bool, Bool, String?)

        var description: String {
            switch self {
            case .incomplete: "incomplete"
            case .unframed: "unframed"
            case .request(let m, let t, let n, let c, let k, let a, let i): "\(m) \(t) \(n) \(c) \(k) \(a) \(i ?? "-")"
            }
        }
    }

    static func frame(_ text: String) -> Expected {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { p in
            switch RequestHead.frame(p) {
            case .incomplete: .incomplete
            case .unframed: .unframed
            case .request(let h):
                .request(
                    h.method == .get ? "GET" : h.method == .head ? "HEAD" : "other",
                    String(decoding: bytes[h.target], as: UTF8.self), h.length, h.contentLength, h.keepAlive,
                    h.authorization, h.ifNoneMatch.map { String(decoding: bytes[$0], as: UTF8.self) })
            }
        }
    }

    static let tile = "/tiles/pcrs/PM/21/1066413/705459.jpg"

    @Test(arguments: [
        // Framed: what the fast lane may answer, and what it must know to decide.
        ("GET \(tile) HTTP/1.1\r\nHost: x\r\n\r\n", Expected.request("GET", tile, 62, 0, true, false, nil)),
        ("HEAD / HTTP/1.1\r\n\r\n", .request("HEAD", "/", 19, 0, true, false, nil)),
        ("GET / HTTP/1.1\r\nIf-None-Match:  \"abc\" \r\n\r\n", .request("GET", "/", 42, 0, true, false, "\"abc\"")),
        ("GET / HTTP/1.1\r\nauthorization: Token s\r\n\r\n", .request("GET", "/", 42, 0, true, true, nil)),
        (
            "POST /api/extracts HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
            .request("other", "/api/extracts", 51, 12, true, false, nil)
        ),
        ("GET / HTTP/1.1\r\nConnection: close\r\n\r\n", .request("GET", "/", 37, 0, false, false, nil)),
        ("GET / HTTP/1.1\r\nProxy-Connection: Close\r\n\r\n", .request("GET", "/", 43, 0, false, false, nil)),
        ("GET / HTTP/1.0\r\n\r\n", .request("GET", "/", 18, 0, false, false, nil)),
        ("GET / HTTP/1.1\r\nContent-Length: 0  \r\n\r\n", .request("GET", "/", 39, 0, true, false, nil)),
        // Not yet complete: the lane waits (and the header timeout runs).
        ("GET / HTTP/1.1\r\nHost: x\r\n", .incomplete),
        ("GET / HTTP/1.1\r\nHost: x\r\n\r", .incomplete),
        ("", .incomplete),
        // Left to NIO's parser, which answers or refuses them: framing they change, or bytes the
        // parser would read differently.
        ("GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\nHost: x\n\n", .unframed),
        ("GET / HTTP/1.1\r\nX: a\rContent-Length: 5\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nContent-Length: 0\t\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nContent-Length: 1234567890123\r\n\r\n", .unframed),
        ("CONNECT a:443 HTTP/1.1\r\n\r\n", .unframed),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", .unframed),
        ("GET / HTTP/2.0\r\n\r\n", .unframed),
        ("GET  / HTTP/1.1\r\n\r\n", .unframed),
        ("GET /a b HTTP/1.1\r\n\r\n", .unframed),
        ("G(T / HTTP/1.1\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\n: x\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nX: \u{7F}\r\n\r\n", .unframed),
        ("GET / HTTP/1.1\r\nX: " + String(repeating: "a", count: 8200) + "\r\n\r\n", .unframed),
    ])
    func framesOrFallsBack(request: String, expected: Expected) {
        #expect(Self.frame(request) == expected, "\(request.prefix(80).debugDescription)")
    }

    /// A head searched in pieces frames as it does whole, wherever the bytes were cut.
    @Test func aHeadFramesTheSameWhereverItIsCut() {
        let text = "GET \(Self.tile) HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"e\"\r\n\r\n"
        let whole = Self.frame(text)
        let bytes = Array(text.utf8)
        for cut in 0..<bytes.count {
            let first = bytes[..<cut].withUnsafeBytes { RequestHead.frame($0) }
            #expect(first == .incomplete, "cut at \(cut)")
            // Resumed three bytes before where the first search stopped, as the lane does.
            let resumed = bytes.withUnsafeBytes { RequestHead.frame($0, from: max(0, cut - 3)) }
            if case .request(let h) = resumed {
                #expect(Self.frame(text) == whole && h.length == bytes.count)
            } else {
                Issue.record("cut at \(cut): \(resumed)")
            }
        }
    }
}
