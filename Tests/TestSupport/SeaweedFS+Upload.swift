import Foundation
import S3

extension SeaweedFS {
    /// Copies a local folder into the bucket under `prefix`, each file under its relative path
    /// (hidden files and folders, such as lock files, left out): a store tiled to a folder, as a
    /// bucket holds it. Returns the keys written.
    @discardableResult
    public func upload(folder: String, prefix: String) async throws -> [String] {
        var files: [String] = []
        let enumerator = FileManager.default.enumerator(atPath: folder)
        while let relative = enumerator?.nextObject() as? String {
            guard !relative.split(separator: "/").contains(where: { $0.hasPrefix(".") }) else { continue }
            var directory: ObjCBool = false
            let path = (folder as NSString).appendingPathComponent(relative)
            guard FileManager.default.fileExists(atPath: path, isDirectory: &directory), !directory.boolValue else {
                continue
            }
            files.append(relative)
        }
        return try await S3Client.withClient(configuration: configuration) { client in
            let bucket = client.bucket(Self.bucketName)
            var keys: [String] = []
            for relative in files.sorted() {
                let key = prefix.isEmpty ? relative : "\(prefix)/\(relative)"
                try await bucket.upload(file: (folder as NSString).appendingPathComponent(relative), to: key)
                keys.append(key)
            }
            return keys
        }
    }
}
