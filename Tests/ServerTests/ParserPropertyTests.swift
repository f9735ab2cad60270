import Foundation
import PropertyBased
import Server
import Testing

@testable import Serving

/// Generated hostile input for the two parsers that see every request's bytes before anything
/// else: the fast lane's head framer and its tile-path parser (issue 11).
struct ParserPropertyTests {
    // MARK: - Generators

    /// One of `items`, shrinking towards the first.
    static func one<T: Sendable>(of items: [T]) -> Generator<T, Shrink.Integer<Int>> {
        Gen<Int>.int(in: 0...(items.count - 1)).map { items[$0] }
    }

    /// Pieces hostile heads are made of: the framing bytes, header names the framer looks at,
    /// numbers near the limits, and bytes a careless parser trips on.
    static let headPieces: [[UInt8]] =
        [
            "GET", "HEAD", "POST", "CONNECT", "PRI", " ", "  ", "\t", "\r", "\n", "\r\n", "\r\n\r\n", ":", ": ",
            "/tiles/a/PM/1/2/3.jpg", "/", "*", "?x=1", "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "Host", "Content-Length",
            "content-length", "Transfer-Encoding", "chunked", "Connection", "close", "keep-alive", "Upgrade",
            "Proxy-Connection", "If-None-Match", "Authorization", "Origin", "Expect", "0", "7", "42", "000000000042",
            "999999999999", "9999999999999", "99999999999999999999999", "-1", "+1", "1e3", "0x10", "\u{0}", "\u{7F}",
            "\u{1}", "é", "\u{FF}",
        ].map { Array($0.utf8) } + [[0xFF], [0x80], [0xC3]]

    /// Heads glued together from `headPieces`: they often end in a blank line, unlike random bytes.
    static let piecedHead = one(of: headPieces).array(of: 0...40).map { $0.flatMap { $0 } }

    /// Any bytes at all.
    static let randomBytes = Gen<UInt8>.value(in: 0...255).array(of: 0...200)

    /// A well-formed request, changed at a few places (a byte replaced, inserted or removed).
    static let mutatedRequest = zip(
        Gen<UInt8>.value(in: 0...255).array(of: 1...4), Gen<Int>.int(in: 0..<4096).array(of: 1...4),
        Gen<Int>.int(in: 0...2).array(of: 1...4)
    ).map { bytes, positions, kinds in
        var r = Array(
            "GET /tiles/pcrs/PM/19/264040/181245.jpg HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nIf-None-Match: \"a\"\r\n\r\n"
                .utf8)
        for (k, (byte, (position, kind))) in zip(bytes, zip(positions, kinds)).enumerated() where k < r.count {
            let at = position % r.count
            switch kind {
            case 0: r[at] = byte
            case 1: r.insert(byte, at: at)
            default: r.remove(at: at)
            }
        }
        return r
    }

    /// Token characters for header names the framer ignores.
    static let nameCharacter = one(of: Array("abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789-_"))

    /// A GET or HEAD from its parts: method, target, version, headers and a body after the head.
    struct Parts: Sendable, CustomStringConvertible {
        var head: Bool
        var target: String
        var version: String
        var headers: [(String, String)]
        var contentLength: Int?
        var close: Bool
        var body: [UInt8]

        var bytes: [UInt8] { headBytes + body }
        var headBytes: [UInt8] {
            var s = "\(head ? "HEAD" : "GET") \(target) \(version)\r\n"
            for (name, value) in headers { s += "\(name): \(value)\r\n" }
            if let contentLength { s += "Content-Length: \(contentLength)\r\n" }
            if close { s += "Connection: close\r\n" }
            return Array((s + "\r\n").utf8)
        }
        var description: String { String(decoding: bytes, as: UTF8.self).debugDescription }
    }

    static let parts = zip(
        Gen<Bool>.bool,
        Gen<UInt8>.value(in: 33...126).map { Character(UnicodeScalar($0)) }.string(of: 1...60),
        one(of: ["HTTP/1.1", "HTTP/1.0"]),
        zip(
            nameCharacter.string(of: 1...12)
                .filter {
                    !["transfer-encoding", "upgrade", "connection", "proxy-connection", "content-length"]
                        .contains($0.lowercased())
                },
            Gen<UInt8>.value(in: 32...126).map { Character(UnicodeScalar($0)) }.string(of: 0...30)
        ).array(of: 0...6),
        Gen<Int>.int(in: 0...999_999_999_999).optional,
        Gen<Bool>.bool,
        Gen<UInt8>.value(in: 0...255).array(of: 0...20)
    ).map { head, target, version, headers, contentLength, close, body in
        Parts(
            head: head, target: "/" + target, version: version,
            headers: headers.map { ($0, $1.trimmingCharacters(in: .whitespaces)) }, contentLength: contentLength,
            close: close, body: body)
    }

    // MARK: - Framer

    static func frame(_ bytes: [UInt8], from: Int = 0) -> RequestHead.Framing {
        bytes.withUnsafeBytes { RequestHead.frame($0, from: from) }
    }

    /// What holds of any framing: a head lies within the bytes and ends with the blank line, its
    /// target within the request line, its values within the head; Content-Length is what the
    /// head says (no overflow, no sign).
    static func checkFraming(_ bytes: [UInt8]) {
        guard case .request(let h) = frame(bytes) else { return }
        #expect(h.length >= 4 && h.length <= bytes.count)
        #expect(Array(bytes[max(0, h.length - 4)..<h.length]) == Array("\r\n\r\n".utf8))
        #expect(h.target.lowerBound > 0 && h.target.upperBound < h.length && !h.target.isEmpty)
        if h.target.lowerBound > 0, h.target.upperBound < h.length {
            #expect(bytes[h.target].allSatisfy { $0 > 32 && $0 < 127 })
            #expect(bytes[h.target.lowerBound - 1] == 32 && bytes[h.target.upperBound] == 32)
        }
        if let r = h.ifNoneMatch { #expect(r.lowerBound >= 0 && r.upperBound <= h.length) }
        #expect(h.contentLength >= 0 && h.contentLength <= 999_999_999_999)
    }

    /// The fast lane's way of reading a request in pieces: each search starts where the last one
    /// stopped, less three bytes. Returns the first framing that is not `incomplete`.
    static func frameInPieces(_ bytes: [UInt8], cuts: [Int]) -> RequestHead.Framing {
        var scanned = 0
        for end in (cuts.map { min($0, bytes.count) } + [bytes.count]).sorted() {
            let framing = frame(Array(bytes[..<end]), from: max(0, scanned - 3))
            guard framing == .incomplete else { return framing }
            scanned = end
        }
        return .incomplete
    }

    @Test func framerHoldsOnRandomBytes() async {
        await propertyCheck(count: 400, input: Self.randomBytes) { Self.checkFraming($0) }
    }

    @Test func framerHoldsOnPiecedAndMutatedHeads() async {
        await propertyCheck(count: 1000, input: Self.piecedHead) { Self.checkFraming($0) }
        await propertyCheck(count: 1000, input: Self.mutatedRequest) { Self.checkFraming($0) }
    }

    @Test func wellFormedRequestFramesToItsParts() async {
        await propertyCheck(count: 500, input: Self.parts) { parts in
            let bytes = parts.bytes
            guard case .request(let h) = Self.frame(bytes) else {
                Issue.record("not framed: \(parts)")
                return
            }
            #expect(h.method == (parts.head ? .head : .get))
            #expect(String(decoding: bytes[h.target], as: UTF8.self) == parts.target)
            #expect(h.length == parts.headBytes.count)
            #expect(h.contentLength == parts.contentLength ?? 0)
            #expect(h.keepAlive == (parts.version == "HTTP/1.1" && !parts.close))
        }
    }

    @Test func framingDoesNotDependOnHowTheBytesArrive() async {
        await propertyCheck(
            count: 600, input: Gen<Int>.int(in: 0...2), Self.piecedHead, Self.mutatedRequest,
            Gen<Int>.int(in: 0...120).array(of: 1...5)
        ) { kind, pieced, mutated, cuts in
            // Pieced heads rarely frame; the mutated request usually does: both kinds matter.
            let bytes = kind == 0 ? pieced : mutated
            let whole = Self.frame(bytes)
            #expect(Self.frameInPieces(bytes, cuts: cuts) == whole, "\(String(decoding: bytes, as: UTF8.self))")
            // Any prefix is incomplete, or already frames as the whole does.
            for end in stride(from: 0, through: bytes.count, by: max(1, bytes.count / 50)) {
                let prefix = Self.frame(Array(bytes[..<end]))
                if prefix != .incomplete { #expect(prefix == whole, "prefix \(end) of \(bytes)") }
            }
        }
    }

    // MARK: - Tile paths

    /// Pieces of tile paths: the routes' words, names, numbers in canonical and other spellings.
    static let pathPieces: [String] = [
        "/", "/", "/", "tiles", "wmts", "1.0.0", "normal", "default", "pcrs", "PM", "2154_5cm", "0", "1", "7", "19",
        "264040", "999999999", "1000000000", "007", "00", "-1", "+1", "1e3", " 1", "1 ", "0x1F",
        "99999999999999999999", "٣", "１", "²", ".jpg", ".jpeg", ".png", ".webp", ".JPG", ".gif", ".", "..", "%2F",
        "?", "#", "é", "\u{0}",
    ]

    static let randomPath = one(of: pathPieces).array(of: 0...24).map { $0.joined() }

    /// A tile path shaped like a real one, each number spelt in one of several ways.
    static let tileShapedPath = zip(
        Gen<Bool>.bool, Gen<Int>.int(in: 0...9).array(of: 3), Gen<Int>.int(in: 0...1_200_000_000).array(of: 3),
        one(of: ["jpg", "png", "webp", "jpeg", "JPG", "tif"])
    ).map { xyz, spellings, numbers, ext -> String in
        let n = zip(spellings, numbers).map { spelling, number -> String in
            switch spelling {
            case 0: "0\(number)"
            case 1: "-\(number)"
            case 2: "+\(number)"
            case 3: "\(number)0000000000"
            case 4: " \(number)"
            default: "\(number)"
            }
        }
        return xyz
            ? "/tiles/pcrs/PM/\(n[0])/\(n[1])/\(n[2]).\(ext)"
            : "/wmts/1.0.0/pcrs/normal/PM/\(n[0])/\(n[1])/\(n[2]).\(ext)"
    }

    /// The path a parsed tile has, with the extension it was asked with.
    static func path(of route: FastRoute, _ t: TileRequest, ext: Substring) -> String {
        switch route {
        case .xyz: "/tiles/\(t.tileset)/\(t.grid)/\(t.z)/\(t.col)/\(t.row).\(ext)"
        case .wmtsREST: "/wmts/1.0.0/\(t.tileset)/normal/\(t.grid)/\(t.z)/\(t.row)/\(t.col).\(ext)"
        }
    }

    @Test func tilePathParserNeverCrashesAndReadsOnlyPlainNumbers() async {
        await propertyCheck(count: 2000, input: Self.randomPath) { path in
            guard let (_, t) = FastRoute.parse(path) else { return }
            #expect(t.z >= 0 && t.col >= 0 && t.row >= 0 && t.z <= 999_999_999, "\(path)")
            #expect(!t.tileset.isEmpty && !t.grid.isEmpty && !t.tileset.contains("/") && !t.grid.contains("/"))
            #expect(path.utf8.count < 256)
        }
    }

    @Test
    func aParsedTileHasOnlyOneURL() async {
        await propertyCheck(count: 2000, input: Self.tileShapedPath) { path in
            guard let (route, t) = FastRoute.parse(path), let dot = path.lastIndex(of: ".") else { return }
            #expect(Self.path(of: route, t, ext: path[path.index(after: dot)...]) == path)
        }
        await propertyCheck(count: 2000, input: Self.randomPath) { path in
            guard let (route, t) = FastRoute.parse(path), let dot = path.lastIndex(of: ".") else { return }
            #expect(Self.path(of: route, t, ext: path[path.index(after: dot)...]) == path)
        }
    }

    @Test func aTilePathFromPartsParsesToThoseParts() async {
        let name = Self.nameCharacter.string(of: 1...20)
        await propertyCheck(
            count: 1000, input: zip(Gen<Bool>.bool, name, name),
            zip(Gen<Int>.int(in: 0...40), Gen<Int>.int(in: 0...999_999_999), Gen<Int>.int(in: 0...999_999_999)),
            Gen<TileEncoding>.case
        ) { ids, n, encoding in
            let (xyz, tileset, grid) = ids
            let (z, col, row) = n
            let t = TileRequest(tileset: tileset, grid: grid, z: z, col: col, row: row, encoding: encoding)
            let path = Self.path(of: xyz ? .xyz : .wmtsREST, t, ext: encoding.fileExtension[...])
            guard let (parsedRoute, parsed) = FastRoute.parse(path) else {
                Issue.record("not parsed: \(path)")
                return
            }
            #expect(parsedRoute == (xyz ? .xyz : .wmtsREST))
            #expect(
                [parsed.tileset, parsed.grid, "\(parsed.z)/\(parsed.col)/\(parsed.row)"]
                    == [tileset, grid, "\(z)/\(col)/\(row)"])
            #expect(parsed.encoding == encoding)
        }
    }
}
