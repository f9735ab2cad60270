import Foundation

/// The head of one HTTP/1.1 request as the fast lane frames it: where it ends, where its target
/// lies, and the few headers that decide whether the fast lane may answer it. Strict: anything
/// unusual is `unframed` and left to NIO's parser.
package struct RequestHead: Equatable {
    package enum Method { case get, head }
    package enum Framing: Equatable {
        /// The head is not complete yet.
        case incomplete
        /// Not a request the fast lane frames: the parser takes the rest of the connection.
        case unframed
        case request(RequestHead)
    }

    /// GET or HEAD; nil for any other method.
    package var method: Method?
    /// The request target's byte range from the start of the head.
    package var target: Range<Int>
    /// Length of the head, blank line included.
    package var length: Int
    package var contentLength = 0
    /// HTTP/1.1 without `Connection: close`.
    package var keepAlive = true
    package var authorization = false
    package var origin = false
    package var expect = false
    /// The value range of the first `If-None-Match`.
    package var ifNoneMatch: Range<Int>?

    /// Frames the head at the start of `p`, searching for its end from `from` (where an earlier
    /// search of the same bytes stopped, less three).
    package static func frame(_ p: UnsafeRawBufferPointer, from: Int = 0) -> Framing {
        // The head ends at the first CRLF CRLF; every line feed must follow a carriage return and
        // every carriage return be followed by a line feed.
        var end = -1
        var i = from
        while i < p.count {
            if p[i] == 10 {
                guard i > 0, p[i - 1] == 13 else { return .unframed }
                if i >= 3, p[i - 2] == 10 {
                    end = i + 1
                    break
                }
            } else if p[i] == 13, i + 1 < p.count, p[i + 1] != 10 {
                return .unframed
            }
            i += 1
        }
        guard end > 0 else { return .incomplete }
        guard end <= TileFastLane.maxHead else { return .unframed }
        // Request line: method SP target SP HTTP/1.x CRLF.
        guard let lineEnd = find(13, in: p, lineStart: 0, end: end),
            let sp1 = find(32, in: p, lineStart: 0, end: lineEnd),
            let sp2 = find(32, in: p, lineStart: sp1 + 1, end: lineEnd), sp1 > 0, sp2 > sp1 + 1
        else { return .unframed }
        let method = p[..<sp1]
        // CONNECT and the HTTP/2 preface end HTTP/1 framing for the parser: so they do here.
        guard method.allSatisfy(isToken), !same(p, 0..<sp1, "CONNECT"), !same(p, 0..<sp1, "PRI")
        else { return .unframed }
        guard p[(sp1 + 1)..<sp2].allSatisfy({ $0 > 32 && $0 < 127 }) else { return .unframed }
        let version = (sp2 + 1)..<lineEnd
        guard same(p, version, "HTTP/1.1") || same(p, version, "HTTP/1.0") else { return .unframed }
        var head = RequestHead(
            method: same(p, 0..<sp1, "GET") ? .get : same(p, 0..<sp1, "HEAD") ? .head : nil,
            target: (sp1 + 1)..<sp2, length: end)
        var sawLength = false
        var line = lineEnd + 2
        while line < end - 2 {
            let stop = find(13, in: p, lineStart: line, end: end)!
            guard let colon = find(58, in: p, lineStart: line, end: stop), colon > line,
                p[line..<colon].allSatisfy(isToken)
            else { return .unframed }
            var from = colon + 1
            var to = stop
            while from < to, p[from] == 32 || p[from] == 9 { from += 1 }
            while to > from, p[to - 1] == 32 || p[to - 1] == 9 { to -= 1 }
            guard p[from..<to].allSatisfy({ $0 == 9 || ($0 >= 32 && $0 != 127) }) else { return .unframed }
            let name = p[line..<colon]
            let value = p[from..<to]
            func named(_ s: StaticString) -> Bool {
                name.count == s.utf8CodeUnitCount
                    && zip(name, UnsafeBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)).allSatisfy {
                        $0 | 0x20 == $1
                    }
            }
            switch name.count {
            case 14 where named("content-length"):
                // Digits, then spaces only (the parser refuses a tab there).
                var digitsEnd = stop
                while digitsEnd > from, p[digitsEnd - 1] == 32 { digitsEnd -= 1 }
                let digits = p[from..<digitsEnd]
                guard !sawLength, !digits.isEmpty, digits.count <= 12, digits.allSatisfy({ $0 >= 48 && $0 <= 57 })
                else { return .unframed }
                head.contentLength = digits.reduce(0) { $0 * 10 + Int($1 - 48) }
                sawLength = true
            case 17 where named("transfer-encoding"), 7 where named("upgrade"):
                return .unframed
            case 10 where named("connection"), 16 where named("proxy-connection"):
                let lower = String(decoding: value, as: UTF8.self).lowercased()
                if lower.contains("upgrade") { return .unframed }
                if lower.contains("close") { head.keepAlive = false }
            case 13 where named("authorization"):
                head.authorization = true
            case 6 where named("origin"):
                head.origin = true
            case 6 where named("expect"):
                head.expect = true
            case 13 where named("if-none-match"):
                if head.ifNoneMatch == nil { head.ifNoneMatch = from..<to }
            default:
                break
            }
            line = stop + 2
        }
        if p[lineEnd - 1] == UInt8(ascii: "0") { head.keepAlive = false }
        return .request(head)
    }

    /// The offset of the first `byte` in `p[lineStart..<end]` (memchr: this runs for every line of
    /// every request, and a slice's generic search was a percent of the fast lane's time).
    private static func find(_ byte: UInt8, in p: UnsafeRawBufferPointer, lineStart: Int, end: Int) -> Int? {
        guard lineStart < end, let base = p.baseAddress,
            let found = memchr(base + lineStart, Int32(byte), end - lineStart)
        else { return nil }
        return base.distance(to: UnsafeRawPointer(found))
    }

    /// Whether `p[range]` is exactly `word`'s bytes.
    private static func same(_ p: UnsafeRawBufferPointer, _ range: Range<Int>, _ word: StaticString) -> Bool {
        range.count == word.utf8CodeUnitCount
            && memcmp(p.baseAddress! + range.lowerBound, word.utf8Start, range.count) == 0
    }

    /// RFC 9110 token characters, by byte.
    private static let tokens: [Bool] = (0..<256).map { c in
        switch UInt8(c) {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"):
            true
        default:
            "!#$%&'*+-.^_`|~".utf8.contains(UInt8(c))
        }
    }

    private static func isToken(_ c: UInt8) -> Bool { tokens[Int(c)] }
}
