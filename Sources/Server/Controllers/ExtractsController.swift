import Coverage
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Pyramid
import Raster
import Render
import S3
import Serving

/// Extracts under `/api/extracts`: direct downloads, queued jobs, and the source dalles.
struct ExtractsController: Sendable {
    let extracts: ExtractService
    let service: TileService
    /// The store, where each tileset's source index is (`<tileset>/sources.json`).
    let store: any PyramidStore
    /// Reads source dalles in a bucket (`/vsis3/bucket/key`, `s3://bucket/key`); nil: none can be.
    let objects: S3Client?
    /// Proxies whose `X-Forwarded-For` names the client.
    let trustedProxies: AddressRanges

    func addRoutes(to router: Router<DallageRequestContext>) {
        router.post("/api/extracts") { request, context in try await post(request, context: context) }
        router.getOrHead("/api/extracts/dalles") { request, context in try await dalles(request, context: context) }
        router.getOrHead("/api/extracts/:id") { request, context in
            try await run { json(status(try await job(context, request: request)), request) }
        }
        router.delete("/api/extracts/:id") { request, context in
            try await run {
                let j = try await job(context, request: request)
                let asker = await client(request, context)
                guard
                    j.client == asker
                        || service.viewer(authorization: request.headers[.authorization]) == .administrator
                else {
                    throw ServingError(
                        .forbidden, "only the client that asked for this extract, or an administrator, may cancel it")
                }
                return json(status(try await extracts.cancel(j.id)), request)
            }
        }
        router.getOrHead("/api/extracts/:id/download") { request, context in
            try await run {
                let j = try await job(context, request: request)
                guard j.state == .done else {
                    throw ServingError(.conflict, "extract \(j.id) is \(j.state.rawValue), not done")
                }
                if let bucket = extracts.results as? BucketExtractResults {
                    return try await stream(bucket, extracts.resultName(j), name: j.id)
                }
                return try await stream(try extracts.resultPath(j), name: j.id, context: context)
            }
        }
    }

    static let repairedHeader = HTTPField.Name("X-Dallage-Repaired")!

    /// Who asks: per-client limits and job ownership use it.
    func client(_ request: Request, _ context: DallageRequestContext) async -> String {
        // The holder of a valid administrator token or editor key, else the address the request
        // comes from (a made-up token counts as no token).
        if let who = try? await extracts.coverage.authenticate(authorization: request.headers[.authorization]),
            who != .reader
        {
            return who.actor
        }
        let address = ClientIdentity.address(
            remote: context.remoteAddress, forwardedFor: request.headers[values: ClientIdentity.forwardedFor],
            trusted: trustedProxies)
        return "addr:" + address
    }

    /// Largest body of an extract request (a detailed polygon in GeoJSON).
    static let maxBodyBytes = 32 << 20

    func post(_ request: Request, context: DallageRequestContext) async throws -> Response {
        try await run {
            let body = try await request.body.collect(upTo: Self.maxBodyBytes)
            let r: ExtractRequest
            do { r = try JSONDecoder().decode(ExtractRequest.self, from: Data(buffer: body)) } catch {
                throw ServingError(.badInput, StatusRules.describe(error))
            }
            let admin = service.viewer(authorization: request.headers[.authorization]) == .administrator
            let (plan, source) = try await extracts.plan(r, admin: admin)
            if extracts.isDirect(plan) {
                // Rendering stops between strips once the client has gone.
                let path = try await context.watchingClient { gone in
                    try await offload { [extracts] in
                        try extracts.writeNow(plan, from: source) { gone.isRaised }
                    }
                }
                var response = try sendAndDelete(path, name: "\(r.tileset)-extract")
                if plan.repaired { response.headers[Self.repairedHeader] = "true" }
                return response
            }
            let job = try await extracts.enqueue(r, plan: plan, client: await client(request, context))
            var response = json(status(job), request)
            response.status = .accepted
            response.headers[.location] = "/api/extracts/\(job.id)"
            return response
        }
    }

    /// The job named in the path. Its id (128 random bits, told only to the client that asked)
    /// is what lets one follow and download it, so the web map's plain download link works
    /// without a header; cancelling also needs the client's identity.
    func job(_ context: DallageRequestContext, request: Request) async throws -> ExtractJob {
        let id = context.parameters.get("id") ?? ""
        guard id.count <= 64, id.allSatisfy({ $0.isHexDigit || $0 == "-" }),
            let j = try await extracts.jobs.job(id: id)
        else { throw ServingError(.notFound, "no extract '\(id)'") }
        return j
    }

    func status(_ j: ExtractJob) -> JSONValue {
        var o: [String: JSONValue] = [
            "id": .string(j.id), "state": .string(j.state.rawValue),
            "progress": .number((j.progress * 1000).rounded() / 10), "created_at": .string(j.createdAt),
            "updated_at": .string(j.updatedAt),
        ]
        if let m = j.message { o["message"] = .string(m) }
        if let b = j.bytes { o["bytes"] = .number(Double(b)) }
        if let e = j.expiresAt { o["expires_at"] = .string(e) }
        if j.state == .done { o["download"] = .string("/api/extracts/\(j.id)/download") }
        return .object(o)
    }

    /// The source dalles under a polygon (or territory), as a list or a zip of the files.
    func dalles(_ request: Request, context: DallageRequestContext) async throws -> Response {
        try await run {
            let q = request.uri.queryParameters
            guard let tileset = q["tileset"].map(String.init) else {
                throw ServingError(.badInput, "tileset is required")
            }
            var r = ExtractRequest(tileset: tileset)
            if let g = q["geometry"].map(String.init) {
                guard let v = try? JSONValue.parse(g) else { throw ServingError(.badInput, "geometry is not GeoJSON") }
                r.geometry = v
            }
            r.territory = q["territory"].map(String.init)
            // Plan at a coarse resolution: only the polygon matters here.
            r.resolution = 10
            let admin = service.viewer(authorization: request.headers[.authorization]) == .administrator
            let (plan, _) = try await extracts.plan(r, admin: admin)
            let polygon = try Geometry.fromWKT(plan.polygonWKT)
            // Read off the cooperative threads: an object store answers over the network. Absent
            // is nil; a store that does not answer now throws (503), not "no source index".
            let data = try await offload { [store] in try store.read("\(tileset)/sources.json") }
            guard let data, let object = try JSONSerialization.jsonObject(with: data) as? [String: Any],
                let entries = object["entries"] as? [[String: Any]]
            else { throw ServingError(.notFound, "no source index for '\(tileset)'") }
            var found: [(name: String, path: String, size: Int)] = []
            for e in entries where e["error"] == nil {
                guard let path = e["path"] as? String, let b = e["bounds"] as? [String: Double],
                    let wkt = e["crsWKT"] as? String, let minX = b["minX"], let minY = b["minY"], let maxX = b["maxX"],
                    let maxY = b["maxY"]
                else { continue }
                var box = Geometry.rectangle(.init(minX: minX, minY: minY, maxX: maxX, maxY: maxY))
                let src = try SpatialReference(wkt)
                let l93 = try SpatialReference(epsg: 2154)
                if !src.isSame(as: l93) { box = try box.transformed(CoordinateTransform(from: src, to: l93)) }
                if box.intersects(polygon) {
                    found.append(((path as NSString).lastPathComponent, path, e["fileSize"] as? Int ?? 0))
                }
            }
            found.sort { $0.name < $1.name }
            if q["zip"] == "true" {
                let total = found.reduce(0) { $0 + $1.size }
                guard total <= extracts.settings.bytesPerClient else {
                    throw ServingError(
                        .tooLarge,
                        "the dalles weigh \(total >> 20) MB; the limit is \(extracts.settings.bytesPerClient >> 20) MB"
                    )
                }
                // Each dalle is checked before the first byte goes: a missing one is a status, not a cut archive.
                let files = try await zipEntries(found.map { ($0.name, $0.path) })
                // Made while it is sent, nothing kept: a zip of stored (already compressed) files.
                var h = HTTPFields()
                h[.contentType] = "application/zip"
                h[.contentDisposition] = "attachment; filename=\"\(tileset)-dalles.zip\""
                h[.cacheControl] = "no-store"
                let logger = extracts.logger
                return Response(
                    status: .ok, headers: h,
                    body: ResponseBody { writer in
                        do {
                            try await ZipArchive.stream(files) { try await writer.write(ByteBuffer(bytes: $0)) }
                        } catch {
                            // Too late for a status: the client sees a cut archive.
                            logger.error("zip of dalles of \(tileset) stopped: \(error)")
                            throw error
                        }
                        try await writer.finish(nil)
                    })
            }
            return json(
                .object([
                    "tileset": .string(tileset),
                    "dalles": .array(
                        found.map { .object(["nom": .string($0.name), "octets": .number(Double($0.size))]) }),
                ]), request)
        }
    }

    /// The zip entries of dalles on disk or in a bucket, each checked readable (a HEAD for an
    /// object, a few at a time): one that is not answers 503 naming the dalle, the path logged.
    func zipEntries(_ dalles: [(name: String, path: String)]) async throws -> [ZipArchive.Entry] {
        let unreadable = { (name: String, path: String, why: String) -> ServingError in
            extracts.logger.error("dalle \(path) cannot be read: \(why)")
            return ServingError(.unavailable, "the dalle \(name) cannot be read on the server now")
        }
        var entries = [ZipArchive.Entry?](repeating: nil, count: dalles.count)
        var remote: [(index: Int, bucket: String, key: String)] = []
        for (i, d) in dalles.enumerated() {
            if let (bucket, key) = Self.objectName(d.path) {
                remote.append((i, bucket, key))
            } else {
                guard access(d.path, R_OK) == 0 else { throw unreadable(d.name, d.path, "not readable") }
                entries[i] = ZipArchive.Entry(name: d.name, path: d.path)
            }
        }
        if !remote.isEmpty {
            guard let objects else {
                throw unreadable(dalles[remote[0].index].name, dalles[remote[0].index].path, "no S3 credentials")
            }
            let readers = try await withThrowingTaskGroup(of: (Int, Result<S3ObjectReader, any Error>).self) { group in
                var out: [(Int, Result<S3ObjectReader, any Error>)] = []
                var next = 0
                func add() {
                    let (i, bucket, key) = remote[next]
                    next += 1
                    group.addTask {
                        do {
                            return (i, .success(try await S3ObjectReader(bucket: objects.bucket(bucket), key: key)))
                        } catch {
                            return (i, .failure(error))
                        }
                    }
                }
                while next < min(remote.count, Self.concurrentHeads) { add() }
                while let r = try await group.next() {
                    out.append(r)
                    if next < remote.count { add() }
                }
                return out
            }
            for (i, result) in readers {
                switch result {
                case .failure(let error): throw unreadable(dalles[i].name, dalles[i].path, "\(error)")
                case .success(let reader):
                    entries[i] = ZipArchive.Entry(
                        name: dalles[i].name, size: UInt64(reader.size),
                        modified: reader.modified ?? Date(timeIntervalSince1970: 0)
                    ) { offset, count in
                        Array(try await reader.read(at: Int(offset), count: count).readableBytesView)
                    }
                }
            }
        }
        return entries.compactMap { $0 }
    }

    /// HEADs of dalles in a bucket under way at once.
    static let concurrentHeads = 8

    /// The bucket and key of a dalle in object storage, as the tiler records it
    /// (`/vsis3/bucket/key`) or as a user names it (`s3://bucket/key`); nil for a local path.
    static func objectName(_ path: String) -> (bucket: String, key: String)? {
        let rest: Substring
        if path.hasPrefix("/vsis3/") {
            rest = path.dropFirst(7)
        } else if path.hasPrefix("s3://") {
            rest = path.dropFirst(5)
        } else {
            return nil
        }
        guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex, rest.index(after: slash) < rest.endIndex
        else { return nil }
        return (String(rest[..<slash]), String(rest[rest.index(after: slash)...]))
    }

    // MARK: - Helpers

    /// Runs `body`; an error that is not one of the domain's (files, GDAL) names server paths:
    /// it goes to the log, the client reads that the extract failed.
    func run(_ body: () async throws -> Response) async throws -> Response {
        do {
            return try await body()
        } catch let e as NIOTooManyBytesError {
            throw ServingError(
                .tooLarge, "the request body exceeds \(e.maxBytes.map { $0 >> 20 } ?? Self.maxBodyBytes >> 20) MB")
        } catch {
            let e = ServingError.from(error, what: "the extract failed on the server; try again later")
            if e.kind == .internal { extracts.logger.error("extract failed: \(error)") }
            throw e
        }
    }

    func json(_ v: JSONValue, _ request: Request) -> Response {
        Document.response(
            Array(v.text.utf8), contentType: "application/json", request: request, cacheControl: "no-store")
    }

    /// A finished extract whose result is no longer where it was written.
    static func gone(_ name: String) -> ServingError {
        ServingError(.notFound, "the result of extract \(name) is gone")
    }

    /// A file streamed from disk in chunks (results may weigh gigabytes).
    func stream(_ path: String, name: String, context: DallageRequestContext) async throws -> Response {
        // Gone when the folder was cleared, or not shared with the replica that wrote it.
        guard let size = try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int else {
            extracts.logger.error("the result \(path) of a finished extract is missing")
            throw Self.gone(name)
        }
        var h = Self.attachment(path, name: name)
        h[.contentLength] = "\(size)"
        do {
            return Response(status: .ok, headers: h, body: try await FileIO().loadFile(path: path, context: context))
        } catch let e as HTTPError where e.status == .notFound {
            // Deleted since it was looked at (expired meanwhile).
            throw Self.gone(name)
        }
    }

    /// A finished job's result in a bucket, streamed a range at a time (memory holds one range
    /// whatever the result's size; `HEAD` costs the one HEAD of the object). Any replica serves it.
    func stream(_ results: BucketExtractResults, _ object: String, name: String) async throws -> Response {
        guard let reader = try await results.reader(object) else {
            extracts.logger.error("the result \(results.key(object)) of a finished extract is missing")
            throw Self.gone(name)
        }
        var h = Self.attachment(object, name: name)
        h[.contentLength] = "\(reader.size)"
        let logger = extracts.logger
        return Response(
            status: .ok, headers: h,
            body: ResponseBody(contentLength: reader.size) { writer in
                var offset = 0
                do {
                    while offset < reader.size {
                        let piece = try await reader.read(at: offset, count: Self.downloadChunk)
                        guard piece.readableBytes > 0 else { break }
                        offset += piece.readableBytes
                        try await writer.write(piece)
                    }
                } catch {
                    // Too late for a status: the client sees a short body (Content-Length says so).
                    logger.error("download of \(results.key(object)) stopped at byte \(offset): \(error)")
                    throw error
                }
                try await writer.finish(nil)
            })
    }

    /// Bytes of a result in a bucket fetched per GET while it is sent.
    static let downloadChunk = 4 << 20

    /// A direct extract: read into memory (it is at most `direct_pixels`), then deleted.
    func sendAndDelete(_ path: String, name: String) throws -> Response {
        defer { try? FileManager.default.removeItem(atPath: path) }
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return Response(
            status: .ok, headers: Self.attachment(path, name: name), body: .init(byteBuffer: ByteBuffer(data: data)))
    }

    /// Headers of a downloaded file: its type from the extension, a file name, no caching.
    static func attachment(_ path: String, name: String) -> HTTPFields {
        let ext = (path as NSString).pathExtension
        var h = HTTPFields()
        h[.contentType] =
            ExtractFormat.allCases.first { $0.fileExtension == ext }?.mimeType ?? "application/octet-stream"
        h[.contentDisposition] = "attachment; filename=\"\(name).\(ext)\""
        h[.cacheControl] = "no-store"
        return h
    }
}
