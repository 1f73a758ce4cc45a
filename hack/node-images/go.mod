module local.test/kaito-node-images

go 1.24
