import ArgumentParser
import Pyramid

/// The local folder a store (or a pyramid) names, from `--store`, `DALLAGE_STORE`, `store:` or an
/// argument. A URL of another scheme is refused rather than taken for a folder name; an `s3://`
/// store is refused too, clearly, until this command reads and writes object storage.
func localFolder(_ text: String, command: String? = nil) throws -> String {
    let location: StoreLocation
    do {
        location = try StoreLocation(parsing: text)
    } catch {
        throw ValidationError(error.description)
    }
    switch location {
    case .folder(let path):
        return path
    case .s3:
        let by = command.map { "`dallage \($0)`" } ?? "this command"
        throw ValidationError(
            "store '\(location)': S3 stores are not yet supported by \(by) (only a local folder for now)")
    }
}
