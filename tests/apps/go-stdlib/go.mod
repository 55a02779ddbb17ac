module baton.test/apps/go-stdlib

go 1.19
