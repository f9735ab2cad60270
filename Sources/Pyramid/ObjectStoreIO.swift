import S3

/// Where an object store's reads run: readers that may block (WMS maps, extracts, transcoding,
/// footprints, the catalog's rescans) call a store through synchronous methods and wait with
/// `waitFor`; reads several callers share are started here, on the same executor.
enum ObjectStoreIO {
    /// Starts `body` on the object-store executor (a read several callers may share).
    static func start<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) -> Task<T, any Error> {
        Task(executorPreference: objectStoreExecutor) { try await body() }
    }
}
