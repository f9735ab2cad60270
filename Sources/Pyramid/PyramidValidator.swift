import Foundation
import GeoGrid
import Raster

/// Checks a pyramid on disk against its `pyramid.json`: every listed shard present with its
/// size and checksum, laid out as a COG (directories before data, smallest overview first,
/// tiles in row-major order), with the expected levels and standalone tile streams.
public enum PyramidValidator {
    /// One problem found, naming the file.
    public struct Problem: Sendable, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "\(path): \(reason)" }
    }

    public static func validate(directory: String) throws -> (checked: Int, problems: [Problem]) {
        let manifest = try PyramidManifest.load(directory: directory)
        var problems: [Problem] = []
        var listed = Set<String>()
        for shard in manifest.shards {
            listed.insert(shard.path)
            let path = (directory as NSString).appendingPathComponent(shard.path)
            problems += check(shard: shard, path: path, manifest: manifest).map {
                Problem(path: shard.path, reason: $0)
            }
        }
        // Older kept generations' shards stay for `dallage rollback`; files that no kept
        // generation lists are not served: say so.
        let folder = PyramidFolder(directory)
        for g in folder.generations() {
            if let m = try? folder.manifest(generation: g) { listed.formUnion(m.shards.map(\.path)) }
        }
        let root = (directory as NSString).appendingPathComponent("shards")
        if let e = FileManager.default.enumerator(atPath: root) {
            while let f = e.nextObject() as? String {
                guard f.hasSuffix(".tif"), !listed.contains("shards/\(f)") else { continue }
                problems.append(
                    Problem(
                        path: "shards/\(f)",
                        reason: "on disk but listed by no kept generation (`dallage gc` removes it)"))
            }
        }
        return (manifest.shards.count, problems)
    }

    static func check(shard: PyramidManifest.Shard, path: String, manifest: PyramidManifest) -> [String] {
        var out: [String] = []
        let reader: ShardReader
        do { reader = try ShardReader(path: path) } catch { return ["\(error)"] }
        if reader.fileSize != shard.bytes { out.append("size \(reader.fileSize), expected \(shard.bytes)") }
        // The checksum through a 4 MiB buffer: memory does not grow with the shard.
        var crc32: UInt32 = 0
        do {
            let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 16)
            defer { chunk.deallocate() }
            var offset = 0
            while offset < reader.fileSize {
                let part = UnsafeMutableRawBufferPointer(
                    rebasing: chunk[0..<min(chunk.count, reader.fileSize - offset)])
                try reader.read(at: UInt64(offset), into: part)
                crc32 = Deflate.crc32(UnsafeRawBufferPointer(part), previous: crc32)
                offset += part.count
            }
        } catch {
            return out + ["\(error)"]
        }
        let crc = String(format: "%08x", crc32)
        if crc != shard.crc32 { out.append("checksum \(crc), expected \(shard.crc32)") }
        guard let band = manifest.shardScheme.band(containing: shard.z), band.top == shard.z else {
            return out + ["level \(shard.z) is not the top of a band"]
        }
        if reader.images.count != band.levelCount {
            out.append("\(reader.images.count) levels, expected \(band.levelCount)")
        }
        var previousLevelStart = 0
        for (o, image) in reader.images.enumerated().reversed() {
            let n = band.tilesPerSide >> o
            if image.width != n * manifest.tileSize || image.height != n * manifest.tileSize {
                out.append("level \(o) is \(image.width)×\(image.height), expected \(n * manifest.tileSize)")
            }
            let offsets = image.offsets.filter { $0 > 0 }
            if let first = offsets.first {
                if Int(first) < previousLevelStart { out.append("level \(o) data is not after the smaller levels") }
                previousLevelStart = Int(first)
            }
            if offsets != offsets.sorted() { out.append("level \(o) tiles are not in row-major order") }
            var sampled = 0
            for (i, off) in image.offsets.enumerated() where off > 0 {
                let count = Int(image.byteCounts[i])
                guard Int(off) + count <= reader.fileSize else {
                    out.append("level \(o) tile \(i) lies past the end of the file")
                    break
                }
                // Each stored tile must be a complete stream a client can use as it is.
                if sampled < 64 {
                    var bytes = [UInt8](repeating: 0, count: count)
                    do { try bytes.withUnsafeMutableBytes { try reader.read(at: off, into: $0) } } catch {
                        out.append("\(error)")
                        break
                    }
                    if manifest.format == .jpeg,
                        !(bytes.count > 4 && bytes.prefix(2).elementsEqual([0xFF, 0xD8])
                            && bytes.suffix(2).elementsEqual([0xFF, 0xD9]))
                    {
                        out.append("level \(o) tile \(i) is not a complete JPEG stream")
                        break
                    }
                    if manifest.format == .webp,
                        !(bytes.count > 12 && bytes.first == 0x52 && bytes[8] == 0x57)
                    {
                        out.append("level \(o) tile \(i) is not a WebP stream")
                        break
                    }
                    sampled += 1
                }
            }
        }
        return out
    }
}
