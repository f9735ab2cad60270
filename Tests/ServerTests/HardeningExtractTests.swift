import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Raster
import TestSupport
import Testing

@testable import Server

/// Issue 11, extracts: hostile numbers, costly repairs, streamed zips, client identity,
/// oversized bodies and a folder that cannot be written.
@Suite(.serialized)
struct HardeningExtractTests {
    let store = ServerFixture.shared + "/store"

    /// A triangle in Lambert-93 inside the fixture's data.
    static let triangle = """
        {"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},\
        "coordinates":[[[704005,7059955],[704045,7059955],[704025,7059995],[704005,7059955]]]}
        """

    static func object(_ body: ByteBuffer) -> [String: Any] {
        (try? JSONSerialization.jsonObject(with: Data(buffer: body)) as? [String: Any]) ?? [:]
    }

    /// Numbers that used to trap ("Double value cannot be converted to Int") or mean nothing.
    @Test(arguments: ["1e-300", "0", "-1", "1e300", "-1e300", "0.001", "5000"])
    func resolutionOutOfRangeIsRefusedNamingIt(_ resolution: String) async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            let body = #"{"tileset":"pcrs","geometry":\#(Self.triangle),"resolution":\#(resolution)}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                #expect(r.status == .badRequest, "\(String(buffer: r.body))")
                #expect(Self.object(r.body)["parameter"] as? String == "resolution")
            }
        }
    }

    @Test(arguments: [#""NaN""#, #""1e-300""#, "1e400", "null,\"buffer_m\":1e300", "null,\"buffer_m\":-1"])
    func malformedNumbersAreRefused(_ value: String) async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            let body = #"{"tileset":"pcrs","geometry":\#(Self.triangle),"resolution":\#(value)}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                #expect(r.status == .badRequest, "\(String(buffer: r.body))")
                if value.contains("buffer_m") { #expect(Self.object(r.body)["parameter"] as? String == "buffer_m") }
            }
        }
    }

    /// A star of `n` vertices winding 7 times around the fixture's centre (Lambert-93).
    static func star(_ n: Int) -> String {
        let points = (0...n).map { k -> String in
            let a = 2 * Double.pi * Double(7 * (k % n)) / Double(n)
            return String(format: "[%.3f,%.3f]", 704_025 + 20 * cos(a), 7_059_975 + 20 * sin(a))
        }
        return """
            {"type":"Polygon","crs":{"type":"name","properties":{"name":"EPSG:2154"}},\
            "coordinates":[[\(points.joined(separator: ","))]]}
            """
    }

    @Test func invalidPolygonAboveTheRepairBudgetIsRefused() async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            let body = #"{"tileset":"pcrs","geometry":\#(Self.star(20_000)),"resolution":0.5}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                #expect(r.status == .badRequest)
                let o = Self.object(r.body)
                #expect(o["parameter"] as? String == "geometry")
                #expect((o["detail"] as? String)?.contains("Fix geometries") == true, "\(o)")
            }
            // Under the budget, the same kind of polygon is still repaired and extracted.
            let small = #"{"tileset":"pcrs","geometry":\#(Self.star(101)),"resolution":0.5}"#
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: small)) { r in
                #expect(r.status == .ok, "\(String(buffer: r.body))")
                #expect(r.headers[HTTPField.Name("X-Dallage-Repaired")!] == "true")
            }
        }
    }

    @Test func aBodyTooLargeIs413InJSON() async throws {
        try await ServerFixture.app(store: store).test(.router) { client in
            let body = ByteBuffer(repeating: UInt8(ascii: " "), count: 50 << 20)
            try await client.execute(uri: "/api/extracts", method: .post, body: body) { r in
                #expect(r.status == .contentTooLarge)
                #expect(r.headers[.contentType] == "application/json")
                #expect(Self.object(r.body)["error"] as? String == "TooLarge")
            }
        }
    }

    @Test func dallesZipIsStreamedDatedAndLeavesNoFile() async throws {
        let results = NSTemporaryDirectory() + "results-\(UUID().uuidString)"
        try await ServerFixture.app(store: store) { $0.extractsDirectory = results }.test(.router) { client in
            let geometry =
                Self.triangle.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
            let uri = "/api/extracts/dalles?tileset=pcrs&geometry=\(geometry)&zip=true"
            try await client.execute(uri: uri, method: .head) { r in
                #expect(r.status == .ok)
                #expect(r.headers[.contentType] == "application/zip")
                #expect(r.body.readableBytes == 0)
            }
            let zip = NSTemporaryDirectory() + "dalles-\(UUID().uuidString).zip"
            try await client.execute(uri: uri, method: .get) { r in
                #expect(r.status == .ok)
                try Data(buffer: r.body).write(to: URL(fileURLWithPath: zip))
            }
            // Every entry whole (CRC checked), the bytes of its dalle, dated by its file.
            let check = """
                import os, sys, time, zipfile
                z = zipfile.ZipFile(sys.argv[1])
                assert z.testzip() is None
                names = z.namelist()
                assert len(names) == 4, names
                for n in names:
                    i = z.getinfo(n)
                    src = os.path.join(sys.argv[2], n)
                    assert i.compress_type == zipfile.ZIP_STORED
                    assert z.read(n) == open(src, 'rb').read(), n
                    t = time.localtime(os.stat(src).st_mtime)
                    want = (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec // 2 * 2)
                    assert i.date_time == want, (i.date_time, want)
                print("ok", len(names))
                """
            let (status, out) = try await ServerFixture.run(
                "/usr/bin/python3", ["-c", check, zip, ServerFixture.shared + "/src"])
            #expect(status == 0 && out.hasPrefix("ok 4"), "\(out)")
            let left = (try? FileManager.default.contentsOfDirectory(atPath: results)) ?? []
            #expect(left.isEmpty, "\(left)")
        }
    }

    /// Made-up tokens and forwarded addresses do not make a new client; another client cannot
    /// cancel a job, its owner and an administrator can.
    @Test func limitsHoldWhateverTheHeadersAndJobsBelongToTheirOwner() async throws {
        let configure: (inout ServerConfiguration) -> Void = {
            $0.extractsDirectory = NSTemporaryDirectory() + "results-\(UUID().uuidString)"
            $0.extractLimits.directPixels = 1
            $0.extractJobsPerClient = 1
            // One job's estimate (512 × 768 px): a job done meanwhile still counts.
            $0.extractBytesPerClient = 200_000
            $0.adminTokens = ["s3cret"]
        }
        try await ServerFixture.app(store: store, configure: configure).test(.router) { client in
            let body = #"{"tileset":"pcrs","geometry":\#(Self.triangle),"resolution":0.1}"#
            let id = try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) {
                r in
                #expect(r.status == .accepted)
                return Self.object(r.body)["id"] as? String ?? ""
            }
            // 128 random bits.
            #expect(id.count == 32 && id.allSatisfy(\.isHexDigit))
            let forwarded = HTTPField.Name("X-Forwarded-For")!
            for headers: HTTPFields in [
                [.authorization: "Token made-up"], [forwarded: "203.0.113.9"],
                [.authorization: "Bearer x", forwarded: "198.51.100.1, 203.0.113.7"],
            ] {
                try await client.execute(
                    uri: "/api/extracts", method: .post, headers: headers, body: ByteBuffer(string: body)
                ) { r in #expect(r.status == .tooManyRequests, "\(headers)") }
            }
            // An editor key holder is another client: its own job is accepted.
            let project = """
                {"nom":"P","geometrie":{"type":"Polygon","coordinates":[[[3.0565,50.6365],[3.0571,50.6365],\
                [3.0571,50.6369],[3.0565,50.6365]]]},"etapes":[{"statut":"prod_en_cours","date_debut":"2024-01-01"}],\
                "livrables":[{"nom":"ortho","tileset":"pcrs"}]}
                """
            let key = try await client.execute(
                uri: "/api/projects", method: .post, headers: [.authorization: "Token s3cret"],
                body: ByteBuffer(string: project)
            ) { r in
                #expect(r.status == .created, "\(String(buffer: r.body))")
                return Self.object(r.body)["editor_key"] as? String ?? ""
            }
            let editor: HTTPFields = [.authorization: "Token \(key)"]
            let editorJob = try await client.execute(
                uri: "/api/extracts", method: .post, headers: editor, body: ByteBuffer(string: body)
            ) { r in
                #expect(r.status == .accepted)
                return Self.object(r.body)["id"] as? String ?? ""
            }
            // Strangers: refused, and the job is untouched.
            let strangers: [(String, HTTPFields)] = [
                (id, editor), (editorJob, [:]), (editorJob, [.authorization: "Token made-up"]),
            ]
            for (job, headers) in strangers {
                try await client.execute(uri: "/api/extracts/\(job)", method: .delete, headers: headers) {
                    #expect($0.status == .forbidden)
                }
                // (The runner may have started or finished it meanwhile.)
                try await client.execute(uri: "/api/extracts/\(job)", method: .get, headers: headers) { r in
                    #expect(Self.object(r.body)["state"] as? String != "cancelled")
                }
            }
            // Owners, and an administrator.
            try await client.execute(uri: "/api/extracts/\(id)", method: .get) { r in
                #expect(r.status == .ok)
                #expect(Self.object(r.body)["state"] as? String != "cancelled")
            }
            try await client.execute(uri: "/api/extracts/\(editorJob)", method: .delete, headers: editor) { r in
                #expect(r.status == .ok || r.status == .conflict)
                if r.status == .ok { #expect(Self.object(r.body)["state"] as? String == "cancelled") }
            }
            try await client.execute(
                uri: "/api/extracts/\(id)", method: .delete, headers: [.authorization: "Token s3cret"]
            ) { r in
                // 409 when it was already done.
                #expect(r.status == .ok || r.status == .conflict)
                if r.status == .ok { #expect(Self.object(r.body)["state"] as? String == "cancelled") }
            }
        }
    }

    /// Over a socket: `X-Forwarded-For` names the client only when the peer is a trusted proxy.
    @Test(arguments: [(["127.0.0.1", "::1"], true), (["10.0.0.0/8"], false), ([], false)])
    func forwardedForCountsOnlyFromATrustedProxy(_ trusted: [String], _ honoured: Bool) async throws {
        let configure: (inout ServerConfiguration) -> Void = {
            $0.extractsDirectory = NSTemporaryDirectory() + "results-\(UUID().uuidString)"
            $0.extractLimits.directPixels = 1
            $0.trustedProxies = trusted
        }
        try await ServerFixture.app(store: store, configure: configure).test(.live) { client in
            let forwarded = HTTPField.Name("X-Forwarded-For")!
            let body = #"{"tileset":"pcrs","geometry":\#(Self.triangle),"resolution":0.1}"#
            let id = try await client.execute(
                uri: "/api/extracts", method: .post, headers: [forwarded: "192.0.2.1"], body: ByteBuffer(string: body)
            ) { r in
                #expect(r.status == .accepted)
                return Self.object(r.body)["id"] as? String ?? ""
            }
            // Through the proxy another client may not cancel it; the same one (as the proxy
            // appends it) may (409 once the job has already finished). Without trust both are
            // the connection's address, the owner.
            try await client.execute(
                uri: "/api/extracts/\(id)", method: .delete, headers: [forwarded: "192.0.2.2"]
            ) { #expect(($0.status == .forbidden) == honoured, "\($0.status)") }
            try await client.execute(
                uri: "/api/extracts/\(id)", method: .delete, headers: [forwarded: "10.1.1.1, 192.0.2.1"]
            ) { #expect($0.status == .ok || $0.status == .conflict, "\($0.status)") }
        }
    }

    @Test func addressOfAClientBehindTrustedProxies() throws {
        let trusted = try AddressRanges(["10.0.0.0/8", "::1", "192.168.1.1"])
        let proxy = try SocketAddress(ipAddress: "10.0.0.5", port: 1)
        let stranger = try SocketAddress(ipAddress: "203.0.113.5", port: 1)
        func address(_ peer: SocketAddress?, _ header: [String]) -> String {
            ClientIdentity.address(remote: peer, forwardedFor: header, trusted: trusted)
        }
        #expect(address(stranger, ["198.51.100.1"]) == "203.0.113.5")
        #expect(address(proxy, ["198.51.100.1, 192.168.1.1"]) == "198.51.100.1")
        #expect(address(proxy, ["6.6.6.6, 198.51.100.1"]) == "198.51.100.1")
        #expect(address(proxy, ["198.51.100.1", "10.2.2.2"]) == "198.51.100.1")
        #expect(address(proxy, ["not-an-address"]) == "10.0.0.5")
        #expect(address(proxy, []) == "10.0.0.5")
        #expect(address(nil, ["198.51.100.1"]) == "unknown")
        #expect(trusted.contains("::ffff:10.1.2.3") && !trusted.contains("11.0.0.1") && trusted.contains("::1"))
        #expect(throws: ConfigurationError.self) { try AddressRanges(["10.0.0.0/33"]) }
        #expect(throws: ConfigurationError.self) { try AddressRanges(["proxy.example"]) }
    }

    /// An extracts folder that cannot be written: 503 with a reason, no server path, for a
    /// direct extract and in a queued job's message.
    @Test func unwritableExtractsFolderIsReportedWithoutPaths() async throws {
        let file = NSTemporaryDirectory() + "not-a-folder-\(UUID().uuidString)"
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        let body = #"{"tileset":"pcrs","geometry":\#(Self.triangle),"resolution":0.1}"#
        try await ServerFixture.app(store: store) { $0.extractsDirectory = file + "/extracts" }.test(.router) {
            client in
            try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) { r in
                #expect(r.status == .serviceUnavailable)
                let text = String(buffer: r.body)
                #expect(!text.contains("/") && text.contains("cannot store"), "\(text)")
            }
        }
        let configure: (inout ServerConfiguration) -> Void = {
            $0.extractsDirectory = file + "/extracts"
            $0.extractLimits.directPixels = 1
        }
        try await ServerFixture.app(store: store, configure: configure).test(.live) { client in
            let id = try await client.execute(uri: "/api/extracts", method: .post, body: ByteBuffer(string: body)) {
                r in
                #expect(r.status == .accepted)
                return Self.object(r.body)["id"] as? String ?? ""
            }
            var job: [String: Any] = [:]
            try await eventually("the job to fail", timeout: .seconds(60)) {
                job = try await client.execute(uri: "/api/extracts/\(id)", method: .get) { Self.object($0.body) }
                return job["state"] as? String == "failed"
            }
            let message = job["message"] as? String ?? ""
            #expect(!message.isEmpty && !message.contains("/"), "\(message)")
        }
    }
}
