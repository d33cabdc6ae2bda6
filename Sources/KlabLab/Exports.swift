// What every user of the lab also needs: the catalog, and the syscall path with its errors.
@_exported import KlabSchema
@_exported import KlabSystem
