//! Root-cause ranking on PetShop.
