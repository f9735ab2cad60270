import Foundation
import GeoGrid
import S3

/// What `dallage inspect`, `validate` and `export` do with a pyramid in a bucket: the same as with
/// a folder, reading objects instead of files. A shard is fetched whole into a scratch folder
/// (16 MiB ranged GETs, one shard at a time), read there with `ShardReader` as a local file would
/// be, then removed: memory stays at one chunk and disk at one shard.
extension BucketPyramid {
    /// The manifest object as stored (for `inspect --json`) and decoded; nil when there is none.
    public func currentManifestText() async throws -> (text: String, manifest: PyramidManifest)? {
        guard let object = try await data(PyramidManifest.fileName) else { return nil }
        let text = String(decoding: object.bytes.readableBytesView, as: UTF8.self)
        return (text, try Self.decode(PyramidManifest.self, object, url: "\(url)/\(PyramidManifest.fileName)"))
    }

    /// The kept generations as `inspect` lists them, oldest first.
    public func history() async throws -> [GenerationInfo] {
        let current = try await currentManifestText()?.manifest.generation
        var seen = Set<String>()
        var out: [GenerationInfo] = []
        for g in try await generations() {
            let m = try await manifest(generation: g)
            let paths = Set(m.shards.map(\.path))
            out.append(
                GenerationInfo(
                    generation: g, created: m.created, shards: m.shards.count,
                    bytes: m.shards.reduce(0) { $0 + $1.bytes }, newShards: paths.subtracting(seen).count,
                    restores: m.restores, isCurrent: g == current))
            seen.formUnion(paths)
        }
        return out
    }

    /// Fetches one shard object into `scratch` and runs `body` on it as a local shard; the file is
    /// removed after.
    public func withShard<R>(_ path: String, scratch: String, _ body: (String) throws -> R) async throws -> R {
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let file = (scratch as NSString).appendingPathComponent(".shard-\(UUID().uuidString).tif")
        defer { unlink(file) }
        try await bucket.download(key(path), to: file)
        return try body(file)
    }

    /// `PyramidValidator.validate` for a pyramid in a bucket: every shard the manifest lists, fetched
    /// and checked (size, CRC-32, levels, COG layout, tile streams); then the objects under
    /// `shards/` that no kept generation lists.
    public func validate(scratch: String) async throws -> (checked: Int, problems: [PyramidValidator.Problem]) {
        guard let manifest = try await currentManifestText()?.manifest else {
            throw GenerationError("\(url) has no \(PyramidManifest.fileName)")
        }
        var problems: [PyramidValidator.Problem] = []
        var listed = Set<String>()
        for shard in manifest.shards {
            listed.insert(shard.path)
            let found: [String]
            do {
                found = try await withShard(shard.path, scratch: scratch) {
                    PyramidValidator.check(shard: shard, path: $0, manifest: manifest)
                }
            } catch {
                found = ["\(error)"]
            }
            problems += found.map { PyramidValidator.Problem(path: shard.path, reason: $0) }
        }
        for g in try await generations() {
            if let m = try? await self.manifest(generation: g) { listed.formUnion(m.shards.map(\.path)) }
        }
        let start = key("").count
        for o in try await bucket.list(prefix: key("shards/")) where o.key.hasSuffix(".tif") {
            let path = String(o.key.dropFirst(start))
            guard !listed.contains(path) else { continue }
            problems.append(
                PyramidValidator.Problem(
                    path: path, reason: "in the bucket but listed by no kept generation (`dallage gc` removes it)"))
        }
        return (manifest.shards.count, problems)
    }
}
